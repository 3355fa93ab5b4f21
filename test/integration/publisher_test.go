package integration

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	coordinationv1 "k8s.io/api/coordination/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/internal/agentlease"
	"github.com/guixfarm/guix-farm/internal/bucket"
	"github.com/guixfarm/guix-farm/internal/compress"
	"github.com/guixfarm/guix-farm/internal/drvsource"
	"github.com/guixfarm/guix-farm/internal/nar"
	"github.com/guixfarm/guix-farm/internal/publishing"
	"github.com/guixfarm/guix-farm/internal/signing"
	"github.com/guixfarm/guix-farm/test/farm"
	"github.com/guixfarm/guix-farm/test/testbed"
)

// publisherAudience is the audience of the agents' tokens for the publisher service (the chart's).
const publisherAudience = "guix-farm-publisher"

// withPublisher makes the controller serve the publisher service (the farm's signing keys, the
// bucket's admin credentials) on a free port, authenticating agents by TokenReviews of their
// pod-bound tokens.
// The controller also verifies what it reads from the bucket, as the binary does with signing
// keys: narinfos against the farm's public key, .drv files against their store paths.
func withPublisher(t testing.TB) func(f *rbFarm, o *farm.ControllerOptions) {
	return func(f *rbFarm, o *farm.ControllerOptions) {
		o.Publisher = &publishing.Options{Publisher: f.pub, Reread: true,
			Auth: &publishing.TokenReviewer{Client: env.Client, Audiences: []string{publisherAudience},
				ServiceAccounts: []string{farm.AgentServiceAccount}}}
		o.PublisherAddr = fmt.Sprintf("127.0.0.1:%d", testbed.FreePort(t))
		f.publisherURL = "http://" + o.PublisherAddr
		pk, err := signing.ParseNixPublicKey(f.nixPub)
		if err != nil {
			t.Fatal(err)
		}
		cfg := f.cfg
		cfg.AllowUnsigned = true
		verifying, err := bucket.NewReader(cfg, bucket.ReaderOptions{TrustedNixKeys: []signing.NixPublicKey{pk}})
		if err != nil {
			t.Fatal(err)
		}
		f.facts = drvsource.NewFactsCache(verifying, 1000)
		o.Facts, o.Bucket = f.facts, verifying
	}
}

// startPublishingAgents starts the two agents as the chart runs them: no signing key, no bucket
// credential, publishing through the controller's service with a token bound to their Pod.
func (f *rbFarm) startPublishingAgents(t *testing.T) {
	t.Helper()
	for _, a := range rbAgents {
		f.daemons[a].MustRun(t, "nix-store", "--realise", f.bb) // as startAgents, for Nix 2.8's cache race
	}
	for _, a := range rbAgents {
		tok := env.AgentIdentity(t, f.ns, a, publisherAudience)
		f.agents[a] = env.StartDaemonAgent(t, f.kc, f.ns, farm.DaemonAgentSpec{Name: a, Systems: []string{rbSystem}, Slots: 2,
			LeaseDuration: rbLease, DaemonSocket: f.daemons[a].Socket, BucketURL: f.bucketURL,
			PublisherURL: f.publisherURL, TokenFile: tok, TrustedPublicKeys: []string{f.nixPub}})
	}
}

// TestPublishThroughTheController: agents that hold neither signing keys nor bucket credentials
// build real derivations and publish them through the controller's publisher service: presigned
// uploads, narinfos verified and signed by the controller, which nix substitutes. An agent asking
// for uploads of an attempt it does not hold is refused (403) and nothing is written; a token
// bound to no pod, or meant for another audience, is refused; a forged nar (wrong content at its
// presigned key) is rejected at commit, deleted, and named by an Event on the Build.
func TestPublishThroughTheController(t *testing.T) {
	start := time.Now()
	f := startRealFarm(t, withPublisher(t))
	f.instantiate(t)
	ctx := t.Context()

	// An attempt the test itself holds, as agent "forger" (a Pod of its own, a live Lease without
	// free slots so nothing else is planned on it), of leaf0's Build, before any agent runs.
	f.submitBuilds(t, nil, "leaf0")
	forged := f.byAttr(t, "leaf0")
	holdAttempt(t, f.ns, forged, "forger")
	forger := &publishing.Client{URL: f.publisherURL, TokenFile: env.AgentIdentity(t, f.ns, "forger", publisherAudience)}

	f.submitBuilds(t, nil, "chain0", "chain1", "chain2", "multi")
	f.startPublishingAgents(t)
	t.Logf("farm and agents up after %s", time.Since(start).Round(100*time.Millisecond))

	t.Run("real builds published through the service: signed, substitutable, logs kept", func(t *testing.T) {
		f.waitSucceeded(t, 3*time.Minute, "chain0", "chain1", "chain2", "multi")
		for _, a := range []string{"chain0", "chain1", "chain2", "multi"} {
			f.checkOutputs(t, a) // narinfo signed by the farm's key (f.reader verifies), NarHash the daemon's
		}
		if atts, err := f.reader.LogAttempts(ctx, f.builds["chain2"].drv); err != nil || !slices.Contains(atts, 1) {
			t.Errorf("attempt logs of chain2 in the bucket: %v, %v; want attempt 1's", atts, err)
		}
		f.readLog(t, f.builds["chain2"].drv, 0) // the derivation's log, where nix log reads it
		for name, p := range f.agents {
			noCredentials(t, name, p.Cmd.Process.Pid, f.minio.SecretKey)
		}
		f.substitution(t)
	})

	t.Run("an attempt the agent does not hold: 403, nothing written", func(t *testing.T) {
		a := &publishing.Client{URL: f.publisherURL, TokenFile: env.AgentIdentity(t, f.ns, "agent-c", publisherAudience)}
		item, _ := leafItem(t, f, "not what leaf 0 holds\n")
		before := f.objectKeys(t)
		ref := publishing.AttemptRef{Namespace: f.ns, Name: forged.Name, UID: string(forged.UID), Attempt: forged.Status.AttemptCount}
		_, err := a.Uploads(ctx, publishing.UploadsRequest{Attempt: ref, Items: []publishing.Item{item}})
		var pe *publishing.Error
		if !errors.As(err, &pe) || pe.Status != 403 || !errors.Is(err, publishing.ErrNotOwner) {
			t.Errorf("uploads for forger's attempt asked by agent-c: %v; want 403 NotOwner", err)
		}
		_, err = a.Commit(ctx, publishing.CommitRequest{Attempt: ref, Compression: compress.Zstd, Items: []publishing.CommitItem{{Item: item}}})
		if !errors.Is(err, publishing.ErrNotOwner) {
			t.Errorf("commit of forger's attempt by agent-c: %v; want NotOwner", err)
		}
		// A Build that succeeded is nobody's attempt any more, not even its builder's.
		done := f.byAttr(t, "chain0")
		builder := &publishing.Client{URL: f.publisherURL, TokenFile: env.AgentIdentity(t, f.ns, "agent-d", publisherAudience)}
		_, err = builder.Uploads(ctx, publishing.UploadsRequest{Attempt: publishing.AttemptRef{Namespace: f.ns, Name: done.Name,
			UID: string(done.UID), Attempt: done.Status.AttemptCount}, Items: []publishing.Item{item}})
		if !errors.Is(err, publishing.ErrNotOwner) {
			t.Errorf("uploads for a finished Build: %v; want NotOwner", err)
		}
		for what, c := range map[string]*publishing.Client{
			"a token bound to no pod":   {URL: f.publisherURL, TokenFile: env.UnboundToken(t, f.ns, publisherAudience)},
			"a token for the apiserver": {URL: f.publisherURL, TokenFile: env.AgentIdentity(t, f.ns, "agent-e")},
			"no token at all":           {URL: f.publisherURL, TokenFile: writeToken(t, "")},
			"a token that is none":      {URL: f.publisherURL, TokenFile: writeToken(t, "garbage")},
		} {
			_, err := c.Uploads(ctx, publishing.UploadsRequest{Attempt: ref, Items: []publishing.Item{item}})
			if !errors.As(err, &pe) || (pe.Status != 401 && pe.Status != 403) || errors.Is(err, publishing.ErrNotOwner) {
				t.Errorf("%s: %v; want 401 or 403 before any ownership check", what, err)
			} else {
				t.Logf("%s: %s", what, pe.Message)
			}
		}
		if after := f.objectKeys(t); !slices.Equal(before, after) {
			t.Errorf("refused requests changed the bucket: %d objects before, %d after", len(before), len(after))
		}
	})

	t.Run("a forged nar is rejected at commit and deleted", func(t *testing.T) {
		item, _ := leafItem(t, f, "leaf 0\n")
		ref := publishing.AttemptRef{Namespace: f.ns, Name: forged.Name, UID: string(forged.UID), Attempt: forged.Status.AttemptCount}
		up, err := forger.Uploads(ctx, publishing.UploadsRequest{Attempt: ref, Items: []publishing.Item{item}})
		if err != nil {
			t.Fatal(err)
		}
		u := up.Items[0].Upload
		if u == nil || up.Compression != compress.Zstd || !strings.Contains(u.URL, bucket.NarKey(compress.Zstd, item.NarHash)) {
			t.Fatalf("uploads answer %+v; want a presigned PUT of the item's zstd nar key", up)
		}
		if u.Expires.After(time.Now().Add(publishing.DefaultExpiry + time.Minute)) {
			t.Errorf("the URL expires at %s, past the service's %s", u.Expires, publishing.DefaultExpiry)
		}
		// The URL is for that key alone.
		other := strings.Replace(u.URL, strings.TrimPrefix(item.NarHash, "sha256:"), strings.Repeat("0", 52), 1)
		if err := forger.Put(ctx, bucket.PresignedPut{URL: other, Headers: u.Headers, Expires: u.Expires}, strings.NewReader("x"), 1); err == nil {
			t.Errorf("a presigned URL, its key changed, was accepted")
		}
		_, trojan := leafItem(t, f, "a trojan leaf\n")
		z := zstdBytes(t, trojan)
		if err := forger.Put(ctx, *u, bytes.NewReader(z), int64(len(z))); err != nil {
			t.Fatalf("PUT of the forged nar: %v", err)
		}
		_, err = forger.Commit(ctx, publishing.CommitRequest{Attempt: ref, Compression: up.Compression,
			Items: []publishing.CommitItem{{Item: item, FileSize: int64(len(z))}}})
		if !errors.Is(err, publishing.ErrInvalidUpload) {
			t.Fatalf("commit of a forged nar: %v; want InvalidUpload", err)
		}
		t.Logf("forged nar refused: %v", err)
		if _, err := f.reader.NarInfo(ctx, item.Path); !errors.Is(err, bucket.ErrNotFound) {
			t.Errorf("narinfo of the forged item: %v; want none", err)
		}
		if _, err := f.minio.Client.StatObject(ctx, rbBucket, up.Items[0].NarKey, minio.StatObjectOptions{}); err == nil {
			t.Errorf("the forged nar %s is still in the bucket", up.Items[0].NarKey)
		}
		// The forger is declared lost (its Lease deleted) and comes back with a new Lease: the
		// attempt it still names is of the earlier term, no longer its own.
		l := &coordinationv1.Lease{}
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: f.ns, Name: "forger"}, l); err != nil {
			t.Fatal(err)
		}
		if err := env.Client.Delete(ctx, l); err != nil {
			t.Fatal(err)
		}
		l = &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "forger", Namespace: f.ns}}
		agentlease.Apply(l, agentlease.Info{Name: "forger", Systems: []string{"nothing-this-farm-builds"}, Slots: 1}, time.Now(), time.Hour)
		if err := env.Client.Create(ctx, l); err != nil {
			t.Fatal(err)
		}
		if _, err := forger.Uploads(ctx, publishing.UploadsRequest{Attempt: ref, Items: []publishing.Item{item}}); !errors.Is(err, publishing.ErrNotOwner) {
			t.Errorf("uploads for an attempt of an earlier Lease term: %v; want NotOwner", err)
		} else {
			t.Logf("earlier term refused: %v", err)
		}
		waitFor(t, 10*time.Second, "an UploadRejected Event on the Build", func() (bool, string) {
			var list eventsv1.EventList
			if err := env.Client.List(ctx, &list, client.InNamespace(f.ns)); err != nil {
				t.Fatal(err)
			}
			var evs []string
			for _, e := range list.Items {
				if e.Regarding.Name == forged.Name && e.Reason == "UploadRejected" {
					return true, ""
				}
				evs = append(evs, e.Reason)
			}
			return false, strings.Join(evs, ", ")
		})
	})
	t.Run("an output whose narinfo the farm did not sign is not available, and is built", func(t *testing.T) {
		// late0 built elsewhere and published under another key: its narinfo and nar are in the
		// bucket, but the controller (trusting the farm's key only) counts it absent.
		rb := f.builds["late0"]
		f.publishOutputs(t, rb.drv) // its .drv, signed by the farm (a submission)
		f.submit.MustRun(t, "nix-store", "--realise", rb.drv)
		other, err := signing.GenerateNixKey(rand.Reader, "not-the-farm-1")
		if err != nil {
			t.Fatal(err)
		}
		cfg := f.cfg
		cfg.Keys = signing.Keys{Nix: []signing.NixSecretKey{other}}
		stranger, err := bucket.NewPublisher(cfg)
		if err != nil {
			t.Fatal(err)
		}
		outPath := rb.outs["out"]
		if _, err := stranger.Publish(ctx, bucket.DiskItem(outPath, f.submit.HostPath(outPath))); err != nil {
			t.Fatal(err)
		}
		if ok, err := f.owner.CheckFresh(ctx, rb.drv); ok || err != nil {
			t.Errorf("availability of an output only a stranger signed: %v, %v; want absent", ok, err)
		}
		// A Build that would be skipped if its outputs were available is built, and its
		// output's narinfo ends signed by the farm (the publisher signs it again in place).
		b := farm.MakeBuild("late0-skip", f.ns, rb.drv).Obj()
		b.Spec.SkipIfOutputsAvailable = true
		if err := env.Client.Create(ctx, b); err != nil {
			t.Fatal(err)
		}
		rb.name = b.Name
		waitFor(t, 10*time.Second, "an UntrustedOutput Event on the Build", func() (bool, string) {
			var list eventsv1.EventList
			if err := env.Client.List(ctx, &list, client.InNamespace(f.ns)); err != nil {
				t.Fatal(err)
			}
			for _, e := range list.Items {
				if e.Regarding.Name == b.Name && e.Reason == "UntrustedOutput" {
					t.Logf("Event: %s", e.Note)
					return true, ""
				}
			}
			return false, fmt.Sprintf("%d Events", len(list.Items))
		})
		f.waitSucceeded(t, 2*time.Minute, "late0")
		if got := f.byAttr(t, "late0"); got.Status.AttemptCount != 1 {
			t.Errorf("late0: %s; want built in one attempt, not skipped", rbState(got))
		}
		f.checkOutputs(t, "late0") // the narinfo verifies with the farm's key now
		if ok, err := f.owner.CheckFresh(ctx, rb.drv); !ok || err != nil {
			t.Errorf("availability once the farm signed it: %v, %v", ok, err)
		}
	})
	t.Logf("TestPublishThroughTheController ran %s", time.Since(start).Round(100*time.Millisecond))
}

// holdAttempt makes agent hold b's attempt 1, as its claim would: a live Lease for a system no
// Build asks for (the planner gives it nothing), and b Running on it.
func holdAttempt(t *testing.T, ns string, b *farmv1.Build, agent string) {
	t.Helper()
	ctx := t.Context()
	l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: agent, Namespace: ns}}
	agentlease.Apply(l, agentlease.Info{Name: agent, Systems: []string{"nothing-this-farm-builds"}, Slots: 1, FreeSlots: 0}, time.Now(), time.Hour)
	if err := env.Client.Create(ctx, l); err != nil {
		t.Fatal(err)
	}
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error { // the controller writes its conditions
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(b), b); err != nil {
			return err
		}
		b.Status.Phase = farmv1.BuildRunning
		b.Status.AttemptCount = 1
		b.Status.Allocation = &farmv1.Allocation{Agent: agent, PlannedAt: metav1.Now()}
		b.Status.Attempt = &farmv1.Attempt{Agent: agent, Started: metav1.Now(), LeaseUID: string(l.UID)}
		return env.Client.Status().Update(ctx, b)
	})
	if err != nil {
		t.Fatalf("making %s hold %s: %v", agent, b.Name, err)
	}
}

// leafItem is leaf0's output as an item whose nar is a file holding content, and that nar.
func leafItem(t *testing.T, f *rbFarm, content string) (publishing.Item, []byte) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "leaf")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := nar.Dump(&b, p); err != nil {
		t.Fatal(err)
	}
	h, n, _ := nar.Hash(bytes.NewReader(b.Bytes()))
	return publishing.Item{Path: f.builds["leaf0"].outs["out"], NarHash: h, NarSize: uint64(n), Output: true}, b.Bytes()
}

func zstdBytes(t *testing.T, data []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	w, err := compress.NewWriter(&b, compress.Zstd, 0)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(data)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func writeToken(t *testing.T, tok string) string {
	p := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(p, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// objectKeys lists the bucket's objects.
func (f *rbFarm) objectKeys(t *testing.T) []string {
	t.Helper()
	var keys []string
	for o := range f.minio.Client.ListObjects(t.Context(), rbBucket, minio.ListObjectsOptions{Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		keys = append(keys, o.Key)
	}
	slices.Sort(keys)
	return keys
}

// noCredentials: the agent process has neither a signing key nor the bucket's secret in its
// command line or environment.
func noCredentials(t *testing.T, name string, pid int, secret string) {
	t.Helper()
	for _, f := range []string{"cmdline", "environ"} {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, f))
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(data, []byte(secret)) || bytes.Contains(data, []byte("--signing-keys")) || bytes.Contains(data, []byte("secret-key")) {
			t.Errorf("agent %s has a credential or a key in its %s", name, f)
		}
	}
}
