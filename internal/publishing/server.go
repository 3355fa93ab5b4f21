package publishing

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/go-logr/logr"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/internal/bucket"
	"github.com/guixfarm/guix-farm/internal/index"
	"github.com/guixfarm/guix-farm/internal/lifecycle"
	"github.com/guixfarm/guix-farm/internal/storepath"
)

// Defaults of Options.
const (
	DefaultExpiry   = 10 * time.Minute
	DefaultMaxItems = 100_000
	maxBody         = 128 << 20
)

// Options configure a Server.
type Options struct {
	// Publisher writes to the bucket with the farm's credentials and signs with its keys.
	Publisher *bucket.Publisher
	// Auth tells who a request comes from.
	Auth Authenticator
	// Builds reads Builds afresh from the apiserver (not a cache): ownership is checked on it.
	Builds client.Reader
	// Cache lists the Builds whose attempt an agent runs (index.BuildAttemptAgent), to find the
	// Build of a log request; each candidate is then read afresh from Builds.
	Cache client.Reader
	// Outputs, when set, returns a derivation's output paths (the controller's facts cache): the
	// items an agent marks as outputs must be outputs of its Build's derivation.
	Outputs func(ctx context.Context, drv string) ([]string, error)
	// Expiry of presigned URLs (default DefaultExpiry).
	Expiry time.Duration
	// Reread: commit streams each uploaded nar back and checks its NarHash and NarSize (a full
	// read of every nar by the controller); without it, only that the object exists with the size
	// the agent uploaded.
	Reread bool
	// Parallel is how many items a commit verifies at once (bucket.PublishClosure's).
	Parallel int
	// MaxItems bounds the items of one request (default DefaultMaxItems).
	MaxItems int
	// Recorder, when set, gets a Warning Event on the Build for each refused upload.
	Recorder events.EventRecorder
	Log      logr.Logger
}

// Server is the publisher service (an http.Handler, and a manager Runnable with Addr).
type Server struct {
	o   Options
	mux *http.ServeMux
	// Addr, when set, is where Start serves.
	Addr string
}

// NewServer checks o and makes the service.
func NewServer(o Options) (*Server, error) {
	if o.Publisher == nil || o.Auth == nil || o.Builds == nil {
		return nil, errors.New("publishing: Publisher, Auth and Builds are required")
	}
	if o.Expiry <= 0 {
		o.Expiry = DefaultExpiry
	}
	if o.MaxItems <= 0 {
		o.MaxItems = DefaultMaxItems
	}
	if o.Log.GetSink() == nil {
		o.Log = logr.Discard()
	}
	s := &Server{o: o, mux: http.NewServeMux()}
	s.mux.HandleFunc("GET "+PathHealth, func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	s.mux.HandleFunc("POST "+PathProbe, s.handle("probe", s.probe))
	s.mux.HandleFunc("POST "+PathUploads, s.handle("uploads", s.uploads))
	s.mux.HandleFunc("POST "+PathCommit, s.handle("commit", s.commit))
	s.mux.HandleFunc("POST "+PathLogs, s.handle("log", s.logUpload))
	s.mux.HandleFunc("POST "+PathLogCommit, s.handle("log-commit", s.logCommit))
	return s, nil
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// Start serves on s.Addr until ctx ends (manager.Runnable).
func (s *Server) Start(ctx context.Context) error {
	l, err := net.Listen("tcp", s.Addr)
	if err != nil {
		return fmt.Errorf("publisher: listening on %s: %w", s.Addr, err)
	}
	srv := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		BaseContext: func(net.Listener) context.Context { return ctx }}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	s.o.Log.Info("Publisher service listening", "address", l.Addr().String(), "bucket", s.o.Publisher.Bucket(),
		"compression", s.o.Publisher.Compression(), "reread", s.o.Reread, "urlExpiry", s.o.Expiry)
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// NeedLeaderElection: every replica serves (the service keeps no state between requests).
func (s *Server) NeedLeaderElection() bool { return false }

// handle authenticates the request, decodes its JSON body into a new In, and writes op's answer
// or refusal.
func (s *Server) handle(name string, op func(ctx context.Context, id Identity, body []byte) (any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ctx := r.Context()
		log := s.o.Log.WithValues("op", name)
		id, err := s.o.Auth.Authenticate(ctx, bearer(r))
		var body []byte
		if err == nil {
			log = log.WithValues("agent", id.Agent, "namespace", id.Namespace)
			body, err = io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
			if err != nil {
				err = refuse(ReasonBadRequest, "reading the request: %v", err)
			}
		}
		var out any
		if err == nil {
			out, err = op(ctx, id, body)
		}
		if err != nil {
			var e *Error
			if !errors.As(err, &e) {
				e = refuse(ReasonUnavailable, "%v", err)
			}
			if e.Status == http.StatusServiceUnavailable {
				log.Error(err, "Publisher request failed")
			} else {
				log.Info("Publisher request refused", "reason", e.Reason, "message", e.Message)
			}
			writeJSON(w, e.Status, e)
			return
		}
		log.V(1).Info("Publisher request", "took", time.Since(start))
		writeJSON(w, http.StatusOK, out)
	}
}

// bearer is the request's bearer token, "" when it has none.
func bearer(r *http.Request) string {
	f := strings.Fields(r.Header.Get("Authorization"))
	if len(f) != 2 || !strings.EqualFold(f[0], "Bearer") {
		return ""
	}
	return f[1]
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func decode(body []byte, v any) error {
	if err := json.Unmarshal(body, v); err != nil {
		return refuse(ReasonBadRequest, "decoding the request: %v", err)
	}
	return nil
}

func (s *Server) probe(_ context.Context, id Identity, _ []byte) (any, error) {
	return ProbeResponse{Namespace: id.Namespace, ServiceAccount: id.ServiceAccount, Agent: id.Agent}, nil
}

// owned reads ref's Build afresh and checks that id's agent holds that attempt of it: the same
// Build (UID), not canceled, its status.attempt on this agent, the attempt number the agent claimed.
func (s *Server) owned(ctx context.Context, id Identity, ref AttemptRef, allowCanceled bool) (*farmv1.Build, error) {
	if ref.Namespace != id.Namespace {
		return nil, refuse(ReasonForbidden, "agent %s of namespace %s cannot publish for a Build of namespace %s", id.Agent, id.Namespace, ref.Namespace)
	}
	b := &farmv1.Build{}
	err := s.o.Builds.Get(ctx, client.ObjectKey{Namespace: ref.Namespace, Name: ref.Name}, b)
	switch {
	case apierrors.IsNotFound(err):
		return nil, refuse(ReasonNotOwner, "build %s/%s does not exist", ref.Namespace, ref.Name)
	case err != nil:
		return nil, refuse(ReasonUnavailable, "reading build %s/%s: %v", ref.Namespace, ref.Name, err)
	case string(b.UID) != ref.UID:
		return nil, refuse(ReasonNotOwner, "build %s/%s is another Build now (uid %s, not %s)", ref.Namespace, ref.Name, b.UID, ref.UID)
	case b.Spec.Canceled && !allowCanceled:
		return nil, refuse(ReasonNotOwner, "build %s/%s was canceled", ref.Namespace, ref.Name)
	case !lifecycle.Holds(b, id.Agent) || b.Status.AttemptCount != ref.Attempt:
		holder := "nobody"
		if b.Status.Attempt != nil {
			holder = b.Status.Attempt.Agent
		}
		return nil, refuse(ReasonNotOwner, "agent %s does not hold attempt %d of build %s/%s (phase %s, attempt %d on %s)",
			id.Agent, ref.Attempt, ref.Namespace, ref.Name, b.Status.Phase, b.Status.AttemptCount, holder)
	}
	// The attempt's owner token: it was claimed in a term of the agent's Lease, which ends when
	// the Lease is deleted (the agent declared lost); an agent back from a pause makes a new one.
	if term := b.Status.Attempt.LeaseUID; term != "" {
		l := &coordinationv1.Lease{}
		err := s.o.Builds.Get(ctx, client.ObjectKey{Namespace: ref.Namespace, Name: id.Agent}, l)
		switch {
		case apierrors.IsNotFound(err):
			return nil, refuse(ReasonNotOwner, "agent %s has no Lease: the term attempt %d of build %s/%s was claimed in has ended", id.Agent, ref.Attempt, ref.Namespace, ref.Name)
		case err != nil:
			return nil, refuse(ReasonUnavailable, "reading the Lease of agent %s: %v", id.Agent, err)
		case string(l.UID) != term:
			return nil, refuse(ReasonNotOwner, "attempt %d of build %s/%s was claimed in an earlier Lease term of agent %s", ref.Attempt, ref.Namespace, ref.Name, id.Agent)
		}
	}
	return b, nil
}

// checkItems validates a request's items and, with Options.Outputs, that the items marked as
// outputs are outputs of b's derivation.
func (s *Server) checkItems(ctx context.Context, b *farmv1.Build, items []Item) error {
	if len(items) == 0 {
		return refuse(ReasonBadRequest, "no items")
	}
	if len(items) > s.o.MaxItems {
		return refuse(ReasonBadRequest, "%d items, more than the %d one request may hold", len(items), s.o.MaxItems)
	}
	dir := s.o.Publisher.StoreDir()
	for i, it := range items {
		if it.NarSize == 0 {
			return refuse(ReasonBadRequest, "item %d (%q): narSize is required", i, it.Path)
		}
		if _, err := dir.Parse(it.Path); err != nil {
			return refuse(ReasonBadRequest, "item %d: %v", i, err)
		}
		if _, err := bucket.NormalizeNarHash(it.NarHash); err != nil {
			return refuse(ReasonBadRequest, "item %d (%s): %v", i, it.Path, err)
		}
	}
	if s.o.Outputs == nil {
		return nil
	}
	outs, err := s.o.Outputs(ctx, b.Spec.Derivation)
	if err != nil {
		return refuse(ReasonUnavailable, "reading the outputs of %s: %v", b.Spec.Derivation, err)
	}
	if slices.Contains(outs, "") { // outputs whose paths are known only once built (floating CA)
		return nil
	}
	for _, it := range items {
		if it.Output && !slices.Contains(outs, it.Path) {
			return refuse(ReasonForbidden, "%s is not an output of %s (its outputs: %s)", it.Path, b.Spec.Derivation, strings.Join(outs, ", "))
		}
	}
	return nil
}

func (s *Server) uploads(ctx context.Context, id Identity, body []byte) (any, error) {
	var req UploadsRequest
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	b, err := s.owned(ctx, id, req.Attempt, false)
	if err != nil {
		return nil, err
	}
	if err := s.checkItems(ctx, b, req.Items); err != nil {
		return nil, err
	}
	items := make([]bucket.StoreItem, len(req.Items))
	for i, it := range req.Items {
		items[i] = bucket.StoreItem{StorePath: it.Path, NarHash: it.NarHash, Input: !it.Output}
	}
	states, errs := s.o.Publisher.States(ctx, items)
	if err := classify(errors.Join(errs...)); err != nil {
		return nil, err
	}
	resp := UploadsResponse{Compression: s.o.Publisher.Compression(), Items: make([]ItemUpload, len(req.Items))}
	presigned := map[string]*bucket.PresignedPut{} // one URL per key: items may share content
	for i, st := range states {
		u := ItemUpload{Path: items[i].StorePath, Published: st.Published}
		if !st.Published {
			u.NarKey = st.NarKey
			if !st.NarPresent {
				if p, ok := presigned[st.NarKey]; ok {
					u.Upload = p
				} else {
					p, err := s.o.Publisher.PresignNarPut(ctx, st.NarKey, s.o.Expiry)
					if err != nil {
						return nil, refuse(ReasonUnavailable, "%v", err)
					}
					u.Upload, presigned[st.NarKey] = &p, &p
				}
			}
		}
		resp.Items[i] = u
	}
	s.o.Log.V(1).Info("Uploads handed out", "attempt", req.Attempt.String(), "items", len(req.Items), "uploads", len(presigned))
	return resp, nil
}

func (s *Server) commit(ctx context.Context, id Identity, body []byte) (any, error) {
	var req CommitRequest
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	b, err := s.owned(ctx, id, req.Attempt, false)
	if err != nil {
		return nil, err
	}
	plain := make([]Item, len(req.Items))
	for i, it := range req.Items {
		plain[i] = it.Item
	}
	if err := s.checkItems(ctx, b, plain); err != nil {
		return nil, err
	}
	if req.Compression != s.o.Publisher.Compression() {
		return nil, refuse(ReasonBadRequest, "compression %q: the farm's nars are %s (as the uploads answer said)", req.Compression, s.o.Publisher.Compression())
	}
	// Right before each output's narinfo, the attempt must still be the agent's: one that lost it
	// meanwhile (taken over, canceled, deleted) publishes none of its outputs.
	stillOwned := func(ctx context.Context) error {
		_, err := s.owned(ctx, id, req.Attempt, false)
		return err
	}
	items := make([]bucket.StoreItem, len(req.Items))
	for i, it := range req.Items {
		items[i] = bucket.StoreItem{StorePath: it.Path, References: it.References, Deriver: it.Deriver, CA: it.CA,
			NarHash: it.NarHash, NarSize: it.NarSize,
			Uploaded: &bucket.UploadedNar{Compression: req.Compression, FileSize: it.FileSize, FileHash: it.FileHash, Reread: s.o.Reread}}
		if it.Output {
			items[i].Commit = stillOwned
		} else {
			items[i].Input = true
		}
	}
	start := time.Now()
	res, err := s.o.Publisher.PublishClosure(ctx, items, s.o.Parallel)
	if err != nil {
		err = classify(err)
		var e *Error
		if errors.As(err, &e) && e.Reason == ReasonInvalidUpload {
			s.event(b, "UploadRejected", "agent %s uploaded a nar the publisher refused: %s", id.Agent, e.Message)
		}
		return nil, err
	}
	resp := CommitResponse{Items: make([]Committed, len(res))}
	published := 0
	for i, r := range res {
		resp.Items[i] = Committed{Path: req.Items[i].Path, AlreadyPresent: r.AlreadyPresent}
		if r.NarInfo != nil {
			resp.Items[i].NarHash = r.NarInfo.NarHash
		}
		if !r.AlreadyPresent {
			published++
		}
	}
	s.o.Log.Info("Published", "attempt", req.Attempt.String(), "items", len(res), "new", published, "took", time.Since(start).Round(time.Millisecond))
	return resp, nil
}

// classify turns the bucket's errors into refusals; the strongest reason wins: an agent that is
// no longer the owner is told so first.
func classify(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrNotOwner), errors.Is(err, ErrForbidden):
		var e *Error
		errors.As(err, &e)
		return refuse(e.Reason, "%v", err)
	case errors.Is(err, bucket.ErrNotReproducible):
		return refuse(ReasonNotReproducible, "%v", err)
	case errors.Is(err, bucket.ErrInvalidUpload):
		return refuse(ReasonInvalidUpload, "%v", err)
	case errors.Is(err, bucket.ErrMissingReference):
		return refuse(ReasonMissingReference, "%v", err)
	case errors.As(err, new(*storepath.PathError)):
		return refuse(ReasonBadRequest, "%v", err)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return refuse(ReasonUnavailable, "%v", err)
	}
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return refuse(ReasonUnavailable, "%v", err)
}

func (s *Server) event(b *farmv1.Build, reason, format string, args ...any) {
	if s.o.Recorder == nil {
		return
	}
	s.o.Recorder.Eventf(b, nil, corev1.EventTypeWarning, reason, "Publish", format, args...)
}

// logBuild finds the Build of namespace whose attempt number attempt of drv id's agent holds:
// candidates from the cache (by the agent running their attempt), each read afresh.
func (s *Server) logBuild(ctx context.Context, id Identity, req LogRequest) (*farmv1.Build, error) {
	if req.Derivation == "" || req.Attempt < 1 {
		return nil, refuse(ReasonBadRequest, "derivation and attempt (from 1) are required")
	}
	if s.o.Cache == nil {
		return nil, refuse(ReasonUnavailable, "the publisher has no Build cache to find the Build of a log")
	}
	var l farmv1.BuildList
	if err := s.o.Cache.List(ctx, &l, client.InNamespace(id.Namespace), client.MatchingFields{index.BuildAttemptAgent: id.Agent}); err != nil {
		return nil, refuse(ReasonUnavailable, "listing the Builds of agent %s: %v", id.Agent, err)
	}
	for i := range l.Items {
		c := &l.Items[i]
		if c.Spec.Derivation != req.Derivation {
			continue
		}
		b, err := s.owned(ctx, id, AttemptRef{Namespace: c.Namespace, Name: c.Name, UID: string(c.UID), Attempt: req.Attempt}, true)
		if err == nil {
			return b, nil
		}
		if errors.Is(err, ErrUnavailable) {
			return nil, err
		}
	}
	return nil, refuse(ReasonNotOwner, "agent %s holds no attempt %d of a Build of %s in namespace %s", id.Agent, req.Attempt, req.Derivation, id.Namespace)
}

func (s *Server) logUpload(ctx context.Context, id Identity, body []byte) (any, error) {
	var req LogRequest
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	if _, err := s.logBuild(ctx, id, req); err != nil {
		return nil, err
	}
	u, err := s.o.Publisher.PresignAttemptLogPut(ctx, req.Derivation, int(req.Attempt), s.o.Expiry)
	if err != nil {
		return nil, refuse(ReasonBadRequest, "%v", err)
	}
	return LogResponse{Upload: u}, nil
}

func (s *Server) logCommit(ctx context.Context, id Identity, body []byte) (any, error) {
	var req LogRequest
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	if _, err := s.logBuild(ctx, id, req); err != nil {
		return nil, err
	}
	if err := s.o.Publisher.CommitAttemptLog(ctx, req.Derivation, int(req.Attempt)); err != nil {
		return nil, refuse(ReasonUnavailable, "%v", err)
	}
	return struct{}{}, nil
}
