package guixpeer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/guixfarm/guix-farm/internal/derivation"
	"github.com/guixfarm/guix-farm/internal/nar"
	"github.com/nix-community/go-nix/pkg/nixbase32"
)

// goalResult is Goal::ExitCode in build.cc.
type goalResult int

const (
	ecSuccess goalResult = iota
	ecFailed
	ecNoSubstituters
	ecIncompleteClosure
)

// worker is build.cc's Worker for one buildPaths or ensurePath call. Goals
// run one after the other, depth first, in the order of the Worker's goal
// keys (substitutions before derivations, then by name); guix-daemon
// interleaves them, which the peer does not need to.
type worker struct {
	c                *conn
	permanentFailure bool
	timedOut         bool
	drvDone          map[string]goalResult // derivation goals that ran their builder
	substDone        map[string]goalResult
}

func (c *conn) newWorker() *worker {
	return &worker{c: c, drvDone: map[string]goalResult{}, substDone: map[string]goalResult{}}
}

// exitStatus is Worker::exitStatus: the status of the error a failed
// build reports.
func (w *worker) exitStatus() uint64 {
	switch {
	case w.timedOut:
		return 101
	case w.permanentFailure:
		return 100
	}
	return 1
}

// goal is a top-level or waited-for goal, ordered like CompareGoalPtrs.
type goal struct {
	path    string
	drv     bool
	outputs []string // wanted outputs of a derivation; empty means all
}

func (g goal) key() string {
	if g.drv {
		return "b$" + storePathToName(g.path) + "$" + g.path
	}
	return "a$" + storePathToName(g.path) + "$" + g.path
}

func sortGoals(gs []goal) {
	sort.SliceStable(gs, func(i, j int) bool { return gs[i].key() < gs[j].key() })
}

// buildPaths is LocalStore::buildPaths: "drv!out1,out2" (or a bare .drv,
// all outputs) makes a derivation goal, anything else a substitution goal.
func (c *conn) buildPaths(paths []string, mode uint64) error {
	w := c.newWorker()
	var goals []goal
	for _, p := range paths {
		drv, outs, _ := strings.Cut(p, "!") // parseDrvPathWithOutputs
		if strings.HasSuffix(drv, ".drv") {
			goals = append(goals, goal{path: drv, drv: true, outputs: tokenSet(outs, ",")})
		} else {
			goals = append(goals, goal{path: p})
		}
	}
	sortGoals(goals)
	var failed []string
	for _, g := range goals {
		var r goalResult
		var err error
		if g.drv {
			r, err = w.derivationGoal(g.path, g.outputs, mode)
		} else {
			// makeSubstitutionGoal(*i, buildMode): the mode converts to
			// its bool repair flag, so check mode repairs too.
			r, err = w.substitutionGoal(g.path, mode != bmNormal)
		}
		if err != nil {
			return err // an Error thrown by a goal escapes Worker::run
		}
		// Only ecFailed counts: a path nobody can substitute
		// (ecNoSubstituters) is not reported as failed by buildPaths.
		if r == ecFailed {
			failed = append(failed, g.path)
			if !c.keepGoing {
				break // Worker::removeGoal drops the other top goals
			}
		}
	}
	if len(failed) > 0 {
		sort.Strings(failed)
		return &daemonError{msg: fmt.Sprintf("build of %s failed", showPaths(failed)), status: w.exitStatus()}
	}
	return nil
}

// ensurePath is LocalStore::ensurePath.
func (c *conn) ensurePath(p string) error {
	if c.p.IsValid(p) {
		return nil
	}
	w := c.newWorker()
	r, err := w.substitutionGoal(p, false)
	if err != nil {
		return err
	}
	if r != ecSuccess {
		return &daemonError{msg: fmt.Sprintf("path `%s' does not exist and cannot be created", p), status: w.exitStatus()}
	}
	return nil
}

// tokenSet is tokenizeString into a std::set.
func tokenSet(s, seps string) []string {
	return sortedSet(strings.FieldsFunc(s, func(r rune) bool { return strings.ContainsRune(seps, r) }))
}

// substitutionGoal is SubstitutionGoal (init, tryNext, referencesValid,
// tryToRun, finished) with a substituter that never fails.
func (w *worker) substitutionGoal(p string, repair bool) (goalResult, error) {
	if r, ok := w.substDone[p]; ok {
		return r, nil
	}
	r, err := w.substitute(p, repair)
	if err == nil {
		w.substDone[p] = r
	}
	return r, err
}

func (w *worker) substitute(p string, repair bool) (goalResult, error) {
	c := w.c
	c.addTempRoot(p)
	if !repair && c.p.IsValid(p) {
		return ecSuccess, nil
	}
	info := c.querySubstitutablePathInfos([]string{p})[p]
	if info == nil {
		return ecNoSubstituters, nil // "Hack: don't indicate failure if there were no substituters."
	}
	var nrFailed, nrNoSubst, nrIncomplete int
	var refGoals []goal
	for _, r := range info.refs {
		if r != p {
			refGoals = append(refGoals, goal{path: r})
		}
	}
	sortGoals(refGoals)
	for _, g := range refGoals {
		r, err := w.substitutionGoal(g.path, false)
		if err != nil {
			return 0, err
		}
		switch r {
		case ecFailed:
			nrFailed++
		case ecNoSubstituters:
			nrFailed++
			nrNoSubst++
		case ecIncompleteClosure:
			nrFailed++
			nrIncomplete++
		}
		if r == ecFailed && !c.keepGoing {
			break
		}
	}
	if nrFailed > 0 {
		if nrNoSubst > 0 || nrIncomplete > 0 {
			return ecIncompleteClosure, nil
		}
		return ecFailed, nil
	}
	if !repair && c.p.IsValid(p) {
		return ecSuccess, nil
	}
	if err := c.printMsg(lvlInfo, "fetching path `%s'...", p); err != nil {
		return 0, err
	}
	if c.printBuildTrace {
		// "The second element in the message used to be the name of the
		// substituter but we're left with only one."
		if err := c.printMsg(lvlError, "@ substituter-started %s substitute", p); err != nil {
			return 0, err
		}
	}
	fresh := *info
	fresh.regTime = time.Now().Unix()
	if err := c.p.register([]string{p}, []*pathInfo{&fresh}); err != nil {
		return 0, err
	}
	if err := c.printMsg(lvlChatty, "substitution of path `%s' succeeded", p); err != nil {
		return 0, err
	}
	if c.printBuildTrace {
		if err := c.printMsg(lvlError, "@ substituter-succeeded %s", p); err != nil {
			return 0, err
		}
	}
	return ecSuccess, nil
}

// waitees counts the results of a goal's sub-goals (Goal::waiteeDone).
type waitees struct{ failed, noSubst, incomplete int }

func (n *waitees) add(r goalResult) {
	switch r {
	case ecFailed:
		n.failed++
	case ecNoSubstituters:
		n.failed++
		n.noSubst++
	case ecIncompleteClosure:
		n.failed++
		n.incomplete++
	}
}

// run runs goals in key order; without keepGoing the first ecFailed stops
// the wait for the others.
func (w *worker) run(goals []goal, mode uint64, n *waitees) error {
	sortGoals(goals)
	for _, g := range goals {
		var r goalResult
		var err error
		if g.drv {
			r, err = w.derivationGoal(g.path, g.outputs, mode)
		} else {
			r, err = w.substitutionGoal(g.path, mode == bmRepair)
		}
		if err != nil {
			return err
		}
		n.add(r)
		if r == ecFailed && !w.c.keepGoing {
			return nil
		}
	}
	return nil
}

// derivationGoal is DerivationGoal from init to done.
func (w *worker) derivationGoal(drvPath string, wanted []string, mode uint64) (goalResult, error) {
	if r, ok := w.drvDone[drvPath]; ok {
		return r, nil
	}
	c := w.c
	c.addTempRoot(drvPath) // the constructor protects the .chroot directory

	// init: get the derivation, substituting it if need be.
	var n waitees
	if !(mode == bmNormal && c.p.IsValid(drvPath)) {
		if err := w.run([]goal{{path: drvPath}}, bmNormal, &n); err != nil {
			return 0, err
		}
	}
	if n.failed != 0 {
		// build.cc prints this one with Unicode quotes.
		if err := c.printMsg(lvlError, "cannot build missing derivation ‘%s’", drvPath); err != nil {
			return 0, err
		}
		return ecFailed, nil // MiscFailure
	}
	info, _ := c.p.info(drvPath)
	drv := info.drv
	if drv == nil {
		return 0, errorf("guixpeer: %s is not a derivation the peer could parse", drvPath)
	}

	// haveDerivation, outputsSubstituted and inputsRealised. When a
	// substitute's closure was incomplete (a reference nobody could
	// substitute), Guix builds the inputs and then tries the substitutes
	// again (retrySubstitution); the peer retries once, where Guix, which
	// never clears that flag, would go round for as long as the closure
	// stays incomplete.
	retrySubstitution := false
	for attempt := 0; ; attempt++ {
		c.addTempRoot(drvPath)
		for _, o := range drv.Outputs {
			c.addTempRoot(o.Path)
		}
		invalid := w.invalidOutputs(drv, wanted)
		if len(invalid) == 0 && mode == bmNormal {
			return ecSuccess, nil // AlreadyValid
		}
		n = waitees{}
		if c.useSubstitutes && substitutesAllowed(drv) {
			var gs []goal
			for _, p := range invalid {
				gs = append(gs, goal{path: p})
			}
			if err := w.run(gs, mode, &n); err != nil {
				return 0, err
			}
		}

		if n.failed > 0 && n.failed > n.noSubst+n.incomplete && !c.tryFallback {
			return 0, errorf("some substitutes for the outputs of derivation `%s' failed (usually happens due to networking issues); try `--fallback' to build derivation from source ", drvPath)
		}
		if n.incomplete > 0 {
			retrySubstitution = true
		}
		nrInvalid := len(w.invalidOutputs(drv, wanted))
		switch {
		case mode == bmNormal && nrInvalid == 0:
			return ecSuccess, nil // Substituted
		case mode == bmRepair && nrInvalid == 0:
			return ecSuccess, nil // repairClosure: the peer's store is never corrupt
		case mode == bmCheck && nrInvalid > 0:
			return 0, errorf("`%s' is missing outputs; build it normally before using `--check'", drvPath)
		}
		wanted = nil // "Make sure checkPathValidity() from now on checks all outputs."

		inputMode := uint64(bmNormal)
		if mode == bmRepair {
			inputMode = bmRepair
		}
		var gs []goal
		for _, in := range drv.InputDrvs {
			gs = append(gs, goal{path: in.Path, drv: true, outputs: in.Outputs})
		}
		for _, src := range drv.InputSrcs {
			gs = append(gs, goal{path: src})
		}
		n = waitees{}
		if err := w.run(gs, inputMode, &n); err != nil {
			return 0, err
		}
		if n.failed != 0 {
			if err := c.printMsg(lvlError, "cannot build derivation `%s': %d dependencies couldn't be built", drvPath, n.failed); err != nil {
				return 0, err
			}
			return ecFailed, nil // DependencyFailed
		}
		if retrySubstitution && attempt == 0 {
			continue
		}
		break
	}

	// The input closure: outputs of input derivations, then sources.
	inputs := map[string]bool{}
	for _, in := range drv.InputDrvs {
		inInfo, ok := c.p.info(in.Path)
		if !ok || inInfo.drv == nil {
			return 0, errorf("path `%s' is not valid", in.Path)
		}
		outs := inInfo.drv.OutputPaths()
		for _, name := range in.Outputs {
			p, ok := outs[name]
			if !ok {
				return 0, errorf("derivation `%s' requires non-existent output `%s' from input derivation `%s'", drvPath, name, in.Path)
			}
			if err := c.p.closure([]string{p}, inputs); err != nil {
				return 0, err
			}
		}
	}
	if err := c.p.closure(drv.InputSrcs, inputs); err != nil {
		return 0, err
	}
	allPaths := make([]string, 0, len(inputs)+len(drv.Outputs))
	for p := range inputs {
		allPaths = append(allPaths, p)
	}
	fixedOutput := true
	for _, o := range drv.Outputs {
		allPaths = append(allPaths, o.Path)
		if o.Hash == "" {
			fixedOutput = false
		}
	}

	// tryToBuild
	var missing []string
	for _, o := range drv.Outputs {
		if mode == bmCheck || !c.p.IsValid(o.Path) {
			missing = append(missing, o.Path)
		}
	}
	if len(missing) == 0 {
		return ecSuccess, nil // "someone beat us to it"
	}
	r, err := w.build(drvPath, drv, sortedSet(missing), allPaths, fixedOutput, mode)
	if err == nil {
		w.drvDone[drvPath] = r
	}
	return r, err
}

// invalidOutputs is checkPathValidity(false, ...) over the wanted outputs
// (wantOutput: none wanted means all).
func (w *worker) invalidOutputs(drv *derivation.Derivation, wanted []string) []string {
	var res []string
	for _, o := range drv.Outputs {
		if len(wanted) > 0 && !contains(wanted, o.Name) {
			continue
		}
		if !w.c.p.IsValid(o.Path) {
			res = append(res, o.Path)
		}
	}
	return sortedSet(res)
}

// contains reports whether sorted holds s.
func contains(sorted []string, s string) bool {
	i := sort.SearchStrings(sorted, s)
	return i < len(sorted) && sorted[i] == s
}

func substitutesAllowed(drv *derivation.Derivation) bool {
	v, ok := drv.Getenv("allowSubstitutes")
	return !ok || v == "1"
}

// canBuildLocally is build.cc's on Linux.
func (c *conn) canBuildLocally(platform string) bool {
	sys := c.p.System
	return platform == sys ||
		platform == "i686-linux" && sys == "x86_64-linux" ||
		platform == "armhf-linux" && sys == "aarch64-linux"
}

// buildError is build.cc's BuildError: a build failure the goal reports
// and survives, unlike a plain Error that aborts the whole worker.
type buildError struct{ msg string }

func (e *buildError) Error() string { return e.msg }

// build is startBuilder, the Worker's wait for the builder's output, and
// buildDone with registerOutputs.
func (w *worker) build(drvPath string, drv *derivation.Derivation, missing, allPaths []string, fixedOutput bool, mode uint64) (goalResult, error) {
	c := w.c
	verb := "building"
	switch mode {
	case bmRepair:
		verb = "repairing"
	case bmCheck:
		verb = "checking"
	}
	closeNest, err := c.startNest(lvlInfo, "%s path(s) %s", verb, showPaths(missing))
	if err != nil {
		return 0, err
	}
	if !strings.HasPrefix(drv.Builder, "builtin:") && !c.canBuildLocally(drv.System) {
		// runChild fails before exec; the parent reads the first line the
		// child wrote to the builder pipe and throws it as an Error. With
		// build traces that line is the child's "@ unsupported-platform"
		// trace (prefixed like any message at this nesting).
		msg := fmt.Sprintf("while setting up the build environment: a `%s' is required to build `%s', but I am a `%s'", drv.System, drvPath, c.p.System)
		if c.printBuildTrace {
			msg = c.prefix(lvlError) + fmt.Sprintf("@ unsupported-platform %s %s", drvPath, drv.System)
		}
		closeNest()
		return 0, errorf("%s", msg)
	}
	pid := c.p.nextPID()
	base := path.Base(drvPath)
	logFile := fmt.Sprintf("/var/log/guix/drvs/%s/%s.gz", base[:2], base[2:]) // openLogFile, gzip
	if c.printBuildTrace {
		if err := c.printMsg(lvlError, "@ build-started %s - %s %s %d", drvPath, drv.System, logFile, pid); err != nil {
			closeNest()
			return 0, err
		}
	}
	closeNest()

	outputs, exitCode, timeout, err := w.runBuilder(drvPath, pid)
	if err != nil {
		return 0, err
	}
	if timeout != "" {
		// Worker::waitForInput, then DerivationGoal::timedOut.
		if err := c.printMsg(lvlError, "%s", timeout); err != nil {
			return 0, err
		}
		if c.printBuildTrace {
			if err := c.printMsg(lvlError, "@ build-failed %s - timeout", drvPath); err != nil {
				return 0, err
			}
		}
		w.timedOut = true
		return ecFailed, nil // TimedOut
	}

	// buildDone
	var failure error
	if exitCode != 0 {
		if c.keepFailed {
			if err := c.printMsg(lvlError, "note: keeping build directory `/tmp/guix-build-%s-0'", storePathToName(drvPath)); err != nil {
				return 0, err
			}
		}
		failure = &buildError{fmt.Sprintf("builder for `%s' failed with exit code %d", drvPath, exitCode)}
	} else {
		failure = w.registerOutputs(drvPath, drv, outputs, missing, allPaths, mode)
	}
	var be *buildError
	if errors.As(failure, &be) {
		if err := c.printMsg(lvlError, "%s", be.msg); err != nil {
			return 0, err
		}
		if c.printBuildTrace {
			if err := c.printMsg(lvlError, "@ build-failed %s - %d %s", drvPath, 1, be.msg); err != nil {
				return 0, err
			}
		}
		// PermanentFailure marks the worker; a fixed-output derivation's
		// failure is transient and an exit-0 failure OutputRejected.
		if exitCode != 0 && !fixedOutput {
			w.permanentFailure = true
		}
		return ecFailed, nil
	}
	if failure != nil {
		return 0, failure
	}
	if c.printBuildTrace {
		if err := c.printMsg(lvlError, "@ build-succeeded %s -", drvPath); err != nil {
			return 0, err
		}
	}
	return ecSuccess, nil // Built
}

// runBuilder runs the OnBuild function while relaying its output as
// handleChildOutput does, and enforces build-max-silent-time and
// build-timeout (Worker::waitForInput). It returns the outputs and exit
// code, or the timeout message, or an I/O error on the connection.
func (w *worker) runBuilder(drvPath string, pid int) (map[string][]byte, int, string, error) {
	c := w.c
	fn := c.p.builder(drvPath)
	if fn == nil {
		fn = func(context.Context, io.Writer) (map[string][]byte, error) { return nil, nil }
	}
	ctx, cancel := context.WithCancel(c.ctx)
	defer cancel()
	chunks := make(chan []byte)
	type result struct {
		outputs map[string][]byte
		err     error
	}
	done := make(chan result, 1)
	go func() {
		outs, err := fn(ctx, &builderPipe{ctx: ctx, ch: chunks})
		done <- result{outs, err}
	}()

	var overall, silence <-chan time.Time
	if c.buildTimeout > 0 {
		t := time.NewTimer(time.Duration(c.buildTimeout) * time.Second)
		defer t.Stop()
		overall = t.C
	}
	var silenceTimer *time.Timer
	if c.maxSilentTime > 0 {
		silenceTimer = time.NewTimer(time.Duration(c.maxSilentTime) * time.Second)
		defer silenceTimer.Stop()
		silence = silenceTimer.C
	}
	name := fmt.Sprintf("building of `%s'", drvPath) // the goal's name
	kill := func(msg string) (map[string][]byte, int, string, error) {
		cancel()
		<-done
		return nil, 0, msg, nil
	}
	for {
		select {
		case data := <-chunks:
			if silenceTimer != nil {
				silenceTimer.Reset(time.Duration(c.maxSilentTime) * time.Second)
			}
			if err := w.childOutput(pid, data); err != nil {
				cancel()
				<-done
				return nil, 0, "", err
			}
		case r := <-done:
			if r.err == nil {
				return r.outputs, 0, "", nil
			}
			code := 1
			var ec interface{ ExitCode() int }
			if errors.As(r.err, &ec) && ec.ExitCode() > 0 {
				code = ec.ExitCode()
			}
			return nil, code, "", nil
		case <-silence:
			return kill(fmt.Sprintf("%s timed out after %d seconds of silence", name, c.maxSilentTime))
		case <-overall:
			return kill(fmt.Sprintf("%s timed out after %d seconds", name, c.buildTimeout))
		}
	}
}

// childOutput is DerivationGoal::handleChildOutput: builder output goes to
// the client as is, or behind an "@ build-log <pid> <len>" line when the
// client asked for multiplexed-build-output, and only when the client's
// verbosity reaches its build verbosity.
func (w *worker) childOutput(pid int, data []byte) error {
	c := w.c
	prefix := ""
	if c.multiplexed {
		prefix = fmt.Sprintf("@ build-log %d %d\n", pid, len(data))
	}
	if c.verbosity >= c.buildVerbosity {
		return c.writeToStderr(prefix + string(data))
	}
	return nil
}

// builderPipe is the builder's stdout/stderr pipe as the Worker reads it:
// in pieces of at most 4096 bytes, each handled on its own.
type builderPipe struct {
	ctx context.Context
	ch  chan<- []byte
}

func (b *builderPipe) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		k := min(len(p), 4096)
		select {
		case b.ch <- bytes.Clone(p[:k]):
		case <-b.ctx.Done():
			return n, b.ctx.Err()
		}
		n += k
		p = p[k:]
	}
	return n, nil
}

// registerOutputs is DerivationGoal::registerOutputs: every missing output
// must have been produced, a fixed output must have its declared hash, and
// references are found by scanning for the hash parts of the inputs and
// outputs. Returns a *buildError for a rejected output.
func (w *worker) registerOutputs(drvPath string, drv *derivation.Derivation, outputs map[string][]byte, missing, allPaths []string, mode uint64) error {
	c := w.c
	var paths []string
	var infos []*pathInfo
	for _, o := range drv.Outputs {
		if !contains(missing, o.Path) {
			continue
		}
		narBytes, ok := outputs[o.Name]
		if !ok {
			return &buildError{fmt.Sprintf("builder for `%s' failed to produce output path `%s'", drvPath, o.Path)}
		}
		root, err := parseDump(&decoder{r: bytes.NewReader(narBytes)})
		if err != nil {
			return &buildError{fmt.Sprintf("guixpeer: OnBuild output %s of %s is not a NAR: %v", o.Name, drvPath, err)}
		}
		closeNest, err := c.startNest(lvlTalkative, "scanning for references inside `%s'", o.Path)
		if err != nil {
			return err
		}
		err = w.checkOutput(o, narBytes, root)
		if err == nil {
			var refs []string
			refs, err = nar.References(bytes.NewReader(narBytes), allPaths)
			if err == nil && mode == bmCheck {
				closeNest()
				if prev, ok := c.p.info(o.Path); ok {
					if prev.narHash != sha256.Sum256(narBytes) {
						// A plain Error: it aborts the worker.
						if c.keepFailed {
							return errorf("derivation `%s' may not be deterministic: output `%s' differs from `%s'", drvPath, o.Path, o.Path+"-check")
						}
						return errorf("derivation `%s' may not be deterministic: output `%s' differs", drvPath, o.Path)
					}
					if c.printBuildTrace {
						if err := c.printMsg(lvlError, "@ build-succeeded %s -", drvPath); err != nil {
							return err
						}
					}
				}
				continue
			}
			if err == nil {
				var info *pathInfo
				if info, err = newInfo(o.Path, narBytes, refs, drvPath); err == nil {
					paths = append(paths, o.Path)
					infos = append(infos, info)
				}
			}
		}
		closeNest()
		if err != nil {
			return err
		}
	}
	return c.p.register(paths, infos)
}

// checkOutput verifies a fixed output's hash; the messages and the
// "@ hash-mismatch" trace (with hashes printed by printHash16or32) are
// registerOutputs'.
func (w *worker) checkOutput(o derivation.Output, narBytes []byte, root narRoot) error {
	if o.Hash == "" {
		return nil
	}
	algo := strings.TrimPrefix(o.HashAlgo, "r:")
	recursive := algo != o.HashAlgo
	data := narBytes
	if !recursive {
		if !root.regular || root.executable {
			return &buildError{fmt.Sprintf("output path `%s should be a non-executable regular file", o.Path)}
		}
		data = root.contents
	}
	h := newHash(algo)
	if h == nil {
		return errorf("unknown hash type `%s'", algo)
	}
	h.Write(data)
	got := h.Sum(nil)
	want, err := hex.DecodeString(o.Hash)
	if err != nil {
		return errorf("invalid hash `%s'", o.Hash)
	}
	if !bytes.Equal(got, want) {
		if w.c.printBuildTrace {
			if err := w.c.printMsg(lvlError, "@ hash-mismatch %s %s %s %s", o.Path, o.HashAlgo, printHash16or32(algo, want), printHash16or32(algo, got)); err != nil {
				return err
			}
		}
		return &buildError{fmt.Sprintf("hash mismatch for store item '%s'", o.Path)}
	}
	return nil
}

// printHash16or32 is hash.cc's: base 16 for MD5, nix-base32 otherwise.
func printHash16or32(algo string, h []byte) string {
	if algo == "md5" {
		return hex.EncodeToString(h)
	}
	return nixbase32.EncodeToString(h)
}
