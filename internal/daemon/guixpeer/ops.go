package guixpeer

import (
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"hash"
	"path"
	"sort"
	"strings"

	"github.com/guixfarm/guix-farm/internal/storepath"
)

// perform is nix-daemon.cc performOp. Each case reads its arguments, calls
// startWork, does the work, calls stopWork and writes the reply, in that
// order, because where an error happens relative to startWork decides
// whether the connection survives it.
func (c *conn) perform(op uint64) error {
	switch op {
	case wopIsValidPath:
		// Read as a plain string and checked after startWork, so that a
		// path outside the store is a recoverable error.
		path, err := c.in.string()
		if err != nil {
			return err
		}
		c.startWork()
		if err := assertStorePath(path); err != nil {
			return err
		}
		return c.reply(func() { c.out.bool(c.p.IsValid(path)) })

	case wopQueryValidPaths:
		paths, err := c.in.storePaths()
		if err != nil {
			return err
		}
		c.startWork()
		var res []string
		for _, p := range paths {
			if c.p.IsValid(p) {
				res = append(res, p)
			}
		}
		return c.reply(func() { c.out.strings(res) })

	case wopHasSubstitutes:
		path, err := c.in.storePath()
		if err != nil {
			return err
		}
		c.startWork()
		res := c.querySubstitutablePaths([]string{path})
		return c.reply(func() { c.out.bool(len(res) == 1) })

	case wopQuerySubstitutablePaths:
		paths, err := c.in.storePaths()
		if err != nil {
			return err
		}
		c.startWork()
		res := c.querySubstitutablePaths(paths)
		return c.reply(func() { c.out.strings(res) })

	case wopQueryPathHash:
		path, err := c.in.storePath()
		if err != nil {
			return err
		}
		c.startWork()
		info, err := c.queryPathInfo(path)
		if err != nil {
			return err
		}
		return c.reply(func() { c.out.string(hex.EncodeToString(info.narHash[:])) })

	case wopQueryReferences, wopQueryReferrers, wopQueryValidDerivers, wopQueryDerivationOutputs:
		path, err := c.in.storePath()
		if err != nil {
			return err
		}
		c.startWork()
		var res []string
		switch op {
		case wopQueryReferences:
			info, err := c.queryPathInfo(path)
			if err != nil {
				return err
			}
			res = info.refs
		case wopQueryReferrers:
			res = c.p.referrers(path)
		case wopQueryValidDerivers:
			res = c.p.validDerivers(path)
		default:
			outs, err := c.derivationOutputs(path)
			if err != nil {
				return err
			}
			for _, o := range outs {
				res = append(res, o)
			}
			res = sortedSet(res)
		}
		return c.reply(func() { c.out.strings(res) })

	case wopQueryDerivationOutputNames:
		path, err := c.in.storePath()
		if err != nil {
			return err
		}
		c.startWork()
		outs, err := c.derivationOutputs(path)
		if err != nil {
			return err
		}
		var names []string
		for name := range outs {
			names = append(names, name)
		}
		sort.Strings(names)
		return c.reply(func() { c.out.strings(names) })

	case wopQueryDeriver:
		path, err := c.in.storePath()
		if err != nil {
			return err
		}
		c.startWork()
		info, err := c.queryPathInfo(path)
		if err != nil {
			return err
		}
		return c.reply(func() { c.out.string(info.deriver) })

	case wopQueryPathFromHashPart:
		hashPart, err := c.in.string()
		if err != nil {
			return err
		}
		c.startWork()
		// LocalStore::queryPathFromHashPart: the first valid path sorting
		// at or after the prefix, if it has the prefix.
		if len(hashPart) != 32 {
			return errorf("invalid hash part")
		}
		prefix := StoreDir + "/" + hashPart
		res := ""
		all := c.p.allValid()
		if i := sort.SearchStrings(all, prefix); i < len(all) && strings.HasPrefix(all[i], prefix) {
			res = all[i]
		}
		return c.reply(func() { c.out.string(res) })

	case wopAddToStore:
		return c.addToStore()

	case wopAddTextToStore:
		name, err := c.in.string()
		if err != nil {
			return err
		}
		text, err := c.in.bytes()
		if err != nil {
			return err
		}
		refs, err := c.in.storePaths()
		if err != nil {
			return err
		}
		c.startWork()
		path, err := c.addTextToStore(name, text, refs)
		if err != nil {
			return err
		}
		return c.reply(func() { c.out.string(path) })

	case wopExportPath:
		path, err := c.in.storePath()
		if err != nil {
			return err
		}
		sign, err := c.in.int()
		if err != nil {
			return err
		}
		c.startWork()
		if err := c.exportPath(path, sign == 1); err != nil {
			return err
		}
		return c.reply(func() { c.out.int(1) })

	case wopImportPaths:
		c.startWork()
		// "Unlike Nix, always require a signature, even for "trusted"
		// users."
		paths, err := c.importPaths()
		if err != nil {
			return err
		}
		return c.reply(func() { c.out.strings(paths) })

	case wopBuildPaths:
		drvs, err := c.in.storePaths()
		if err != nil {
			return err
		}
		mode := uint64(bmNormal)
		if c.minor() >= 15 {
			if mode, err = c.in.int(); err != nil {
				return err
			}
			// "Repairing is not atomic, so disallowed for "untrusted"
			// clients." Before startWork: the connection is dropped.
			if mode == bmRepair && !c.trusted {
				return errorf("repairing is a privileged operation")
			}
		}
		c.startWork()
		if err := c.buildPaths(drvs, mode); err != nil {
			return err
		}
		return c.reply(func() { c.out.int(1) })

	case wopEnsurePath:
		path, err := c.in.storePath()
		if err != nil {
			return err
		}
		c.startWork()
		if err := c.ensurePath(path); err != nil {
			return err
		}
		return c.reply(func() { c.out.int(1) })

	case wopAddTempRoot:
		path, err := c.in.storePath()
		if err != nil {
			return err
		}
		c.startWork()
		c.addTempRoot(path)
		return c.reply(func() { c.out.int(1) })

	case wopAddIndirectRoot:
		// absPath against the daemon's cwd, "/". The peer has no file
		// system to follow the symlink through, so the root is accepted
		// and otherwise ignored.
		if _, err := c.in.string(); err != nil {
			return err
		}
		c.startWork()
		return c.reply(func() { c.out.int(1) })

	case wopSyncWithGC:
		c.startWork()
		return c.reply(func() { c.out.int(1) })

	case wopFindRoots:
		// Permanent roots live on the daemon's file system; the peer has
		// none.
		c.startWork()
		return c.reply(func() { c.out.int(0) })

	case wopCollectGarbage:
		return c.collectGarbage()

	case wopSetOptions:
		return c.setOptions()

	case wopQuerySubstitutablePathInfo:
		p, err := c.in.string()
		if err != nil {
			return err
		}
		p = absPath(p)
		c.startWork()
		info := c.querySubstitutablePathInfos([]string{p})[p]
		return c.reply(func() {
			if info == nil {
				c.out.int(0)
				return
			}
			c.out.int(1)
			c.out.string(info.deriver)
			c.out.strings(info.refs)
			c.out.int(uint64(len(info.nar))) // downloadSize
			if c.minor() >= 7 {
				c.out.int(uint64(len(info.nar)))
			}
		})

	case wopQuerySubstitutablePathInfos:
		paths, err := c.in.storePaths()
		if err != nil {
			return err
		}
		c.startWork()
		infos := c.querySubstitutablePathInfos(paths)
		return c.reply(func() {
			c.out.int(uint64(len(infos)))
			for _, p := range paths { // a std::map: sorted by path
				if info, ok := infos[p]; ok {
					c.out.string(p)
					c.out.string(info.deriver)
					c.out.strings(info.refs)
					c.out.int(uint64(len(info.nar))) // downloadSize: the peer's NARs are uncompressed
					c.out.int(uint64(len(info.nar)))
				}
			}
		})

	case wopQueryAllValidPaths:
		c.startWork()
		res := c.p.allValid()
		return c.reply(func() { c.out.strings(res) })

	case wopQueryFailedPaths:
		// build-cache-failure is off by default, so nothing is recorded.
		c.startWork()
		return c.reply(func() { c.out.strings(nil) })

	case wopClearFailedPaths:
		if _, err := c.in.stringSet(); err != nil {
			return err
		}
		c.startWork()
		return c.reply(func() { c.out.int(1) })

	case wopQueryPathInfo:
		path, err := c.in.storePath()
		if err != nil {
			return err
		}
		c.startWork()
		// LocalStore::queryPathInfo throws for an invalid path: Guix has no
		// "found" flag (Nix added one in protocol 1.17).
		info, err := c.queryPathInfo(path)
		if err != nil {
			return err
		}
		return c.reply(func() {
			c.out.string(info.deriver)
			c.out.string(hex.EncodeToString(info.narHash[:]))
			c.out.strings(info.refs)
			c.out.int(uint64(info.regTime))
			c.out.int(uint64(len(info.nar)))
		})

	case wopOptimiseStore:
		c.startWork()
		return c.reply(func() { c.out.int(1) })

	case wopVerifyStore:
		checkContents, err := c.in.int()
		if err != nil {
			return err
		}
		repair, err := c.in.int()
		if err != nil {
			return err
		}
		c.startWork()
		if repair != 0 && !c.trusted {
			return errorf("you are not privileged to repair paths")
		}
		// LocalStore::verifyStore's progress messages; the in-memory store
		// is always consistent.
		if err := c.printMsg(lvlError, "reading the store..."); err != nil {
			return err
		}
		if err := c.printMsg(lvlInfo, "checking path existence..."); err != nil {
			return err
		}
		if checkContents != 0 {
			if err := c.printMsg(lvlInfo, "checking hashes..."); err != nil {
				return err
			}
		}
		return c.reply(func() { c.out.bool(false) })

	case wopBuiltinBuilders:
		// builtins.cc builtinBuilderNames: the keys of a std::map.
		c.startWork()
		return c.reply(func() { c.out.strings([]string{"download", "git-download"}) })

	case wopSubstituteURLs:
		if c.p.version < 0x164 {
			break // not in the 0x163 daemon: the default case below
		}
		c.startWork()
		var urls []string
		if c.settings["build-use-substitutes"] == "true" {
			// "First check the client-provided substitute URLs, then those
			// passed to the daemon."
			s := c.settings["untrusted-substitute-urls"]
			if s == "" {
				s = c.settings["substitute-urls"]
			}
			urls = strings.Fields(s)
		}
		return c.reply(func() { c.out.strings(urls) })
	}
	return errorf("invalid operation %d", op)
}

// reply ends the stderr stream with LAST and writes the reply.
func (c *conn) reply(write func()) error {
	c.stopWork(nil)
	write()
	return nil
}

// Build modes (enum BuildMode in store-api.hh).
const (
	bmNormal = 0
	bmRepair = 1
	bmCheck  = 2
)

// assertStorePath is store-api.cc's: directly inside the store directory.
// It does not look at the hash part or the name, so "<drv>!out" passes.
func assertStorePath(p string) error {
	if !strings.HasPrefix(p, StoreDir+"/") || len(p) < len(StoreDir)+2 || strings.Contains(p[len(StoreDir)+1:], "/") {
		return errorf("path `%s' is not in the store", p)
	}
	return nil
}

// absPath is util.cc absPath relative to "/" (the daemon's cwd) and
// canonPath without symlink resolution.
func absPath(p string) string {
	if !strings.HasPrefix(p, "/") {
		p = "/" + p
	}
	return path.Clean(p)
}

// storePathToName is store-api.cc's: what follows the hash part.
func storePathToName(p string) string {
	if len(p) < len(StoreDir)+34 {
		return ""
	}
	return p[len(StoreDir)+34:]
}

// showPaths is store-api.cc's: each path quoted `like this', comma-separated.
func showPaths(paths []string) string {
	q := make([]string, len(paths))
	for i, p := range paths {
		q[i] = "`" + p + "'"
	}
	return strings.Join(q, ", ")
}

func (c *conn) queryPathInfo(path string) (*pathInfo, error) {
	info, ok := c.p.info(path)
	if !ok {
		return nil, errorf("path `%s' is not valid", path)
	}
	return info, nil
}

// derivationOutputs is the DerivationOutputs table lookup behind
// queryDerivationOutputs and queryDerivationOutputNames.
func (c *conn) derivationOutputs(drvPath string) (map[string]string, error) {
	info, ok := c.p.info(drvPath)
	if !ok {
		// queryValidPathId. Guix's newest local-store.cc has a
		// std::format string that prints a literal "%1%" here; the peer
		// sends the path, as every earlier release does.
		return nil, errorf("path `%s' is not valid", drvPath)
	}
	if info.drv == nil {
		return map[string]string{}, nil
	}
	return info.drv.OutputPaths(), nil
}

// querySubstitutablePaths asks the substituter ("have") which paths it
// can provide; nothing when substitutes are off.
func (c *conn) querySubstitutablePaths(paths []string) []string {
	if !c.useSubstitutes {
		return nil
	}
	var res []string
	for _, p := range paths {
		if _, ok := c.p.substitutable(p); ok {
			res = append(res, p)
		}
	}
	return sortedSet(res)
}

func (c *conn) querySubstitutablePathInfos(paths []string) map[string]*pathInfo {
	res := map[string]*pathInfo{}
	if !c.useSubstitutes {
		return res
	}
	for _, p := range paths {
		if info, ok := c.p.substitutable(p); ok {
			res[p] = info
		}
	}
	return res
}

// setOptions reads SetOptions as performOp does for the client's version:
// from minor 0x61 on there are no maxBuildJobs, maxSilentTime and
// buildCores fields.
func (c *conn) setOptions() error {
	o := Options{}
	var err error
	next := func() uint64 {
		if err != nil {
			return 0
		}
		var v uint64
		v, err = c.in.int()
		return v
	}
	o.KeepFailed = next() != 0
	if c.remote {
		// "don't keep the failed build tree as it is presumably
		// inaccessible to the client"
		c.keepFailed = false
	} else {
		c.keepFailed = o.KeepFailed
	}
	o.KeepGoing = next() != 0
	c.keepGoing = o.KeepGoing
	o.TryFallback = next() != 0
	c.settings["build-fallback"] = fmt.Sprint(o.TryFallback)
	o.Verbosity = next()
	c.verbosity = o.Verbosity
	if c.minor() < 0x61 {
		o.MaxBuildJobs = next()
		o.MaxSilentTime = next()
		c.settings["build-max-jobs"] = fmt.Sprint(o.MaxBuildJobs)
		c.settings["build-max-silent-time"] = fmt.Sprint(o.MaxSilentTime)
	}
	if c.minor() >= 2 {
		o.UseBuildHook = next() != 0 // read; guix-daemon decides itself whether to offload
	}
	if c.minor() >= 4 {
		o.BuildVerbosity = next()
		o.LogType = next()
		o.PrintBuildTrace = next() != 0
		c.buildVerbosity, c.logType, c.printBuildTrace = o.BuildVerbosity, o.LogType, o.PrintBuildTrace
	}
	if c.minor() >= 6 && c.minor() < 0x61 {
		o.BuildCores = next()
		c.settings["build-cores"] = fmt.Sprint(o.BuildCores)
	}
	if c.minor() >= 10 {
		o.UseSubstitutes = next() != 0
		// Only while substitutes are still on: a daemon started with
		// --no-substitutes (or a client that turned them off on this
		// connection) keeps them off.
		if err == nil && c.useSubstitutes {
			c.settings["build-use-substitutes"] = fmt.Sprint(o.UseSubstitutes)
		}
	}
	if err != nil {
		return err
	}
	if c.minor() >= 12 {
		n, err := c.in.int()
		if err != nil {
			return err
		}
		o.Overrides = map[string]string{}
		for i := uint64(0); i < n; i++ {
			name, err := c.in.string()
			if err != nil {
				return err
			}
			value, err := c.in.string()
			if err != nil {
				return err
			}
			o.Overrides[name] = value
			switch {
			case name == "build-timeout", name == "build-max-silent-time",
				name == "build-max-jobs", name == "build-cores",
				name == "build-repeat", name == "multiplexed-build-output":
				c.settings[name] = value
			case name == "user-name" && c.remote:
				// Creates the user's profile directory; nothing to store.
			case c.trusted:
				c.settings[name] = value
			default:
				c.settings["untrusted-"+name] = value
			}
		}
	}
	c.p.mu.Lock()
	c.p.options = o
	c.p.mu.Unlock()
	if err := c.updateSettings(); err != nil {
		return err // before startWork, so the connection goes
	}
	c.startWork()
	c.stopWork(nil)
	return nil
}

// addTextToStore is LocalStore::addTextToStore.
func (c *conn) addTextToStore(name string, text []byte, refs []string) (string, error) {
	if err := checkStoreName(name); err != nil {
		return "", err
	}
	sp, err := storepath.Dir(StoreDir).MakeTextPath(name, text, refs)
	if err != nil {
		return "", errorf("%v", err)
	}
	dst := sp.String()
	c.addTempRoot(dst)
	if c.p.IsValid(dst) {
		return dst, nil
	}
	info, err := newInfo(dst, regularFileNAR(text), refs, "")
	if err != nil {
		return "", errorf("%v", err)
	}
	return dst, c.p.register([]string{dst}, []*pathInfo{info})
}

// checkStoreName is store-api.cc's, with its messages.
func checkStoreName(name string) error {
	if strings.HasPrefix(name, ".") {
		return errorf("invalid name: `%s'", name)
	}
	for i := 0; i < len(name); i++ {
		ch := name[i]
		if !('A' <= ch && ch <= 'Z' || 'a' <= ch && ch <= 'z' || '0' <= ch && ch <= '9' || strings.IndexByte("+-._?=", ch) >= 0) {
			return errorf("invalid character `%c' in name `%s'", ch, name)
		}
	}
	return nil
}

// addToStore is the wopAddToStore case and LocalStore::addToStoreFromDump:
// the NAR comes inline, before startWork.
func (c *conn) addToStore() error {
	baseName, err := c.in.string()
	if err != nil {
		return err
	}
	fixed, err := c.in.int()
	if err != nil {
		return err
	}
	rec, err := c.in.int()
	if err != nil {
		return err
	}
	algo, err := c.in.string()
	if err != nil {
		return err
	}
	recursive := rec == 1
	if fixed != 1 { // "Compatibility hack."
		algo, recursive = "sha256", true
	}
	saved := &recorder{r: c.in.r}
	root, err := parseDump(&decoder{r: saved})
	if err != nil {
		return err
	}
	c.startWork()
	if !recursive && !root.regular {
		return errorf("regular file expected")
	}
	h := newHash(algo)
	if h == nil {
		return errorf("unknown hash type `%s'", algo)
	}
	dump, narBytes := saved.b, saved.b
	if !recursive {
		// Flat: the file's contents are hashed, and stored as a
		// non-executable regular file whatever the NAR said.
		dump, narBytes = root.contents, regularFileNAR(root.contents)
	}
	h.Write(dump)
	hashAlgo := algo
	if recursive {
		hashAlgo = "r:" + algo
	}
	if err := checkStoreName(baseName); err != nil {
		return err
	}
	sp, err := storepath.Dir(StoreDir).MakeFixedOutputPath(baseName, hashAlgo, h.Sum(nil))
	if err != nil {
		return errorf("%v", err)
	}
	dst := sp.String()
	c.addTempRoot(dst)
	if !c.p.IsValid(dst) {
		info, err := newInfo(dst, narBytes, nil, "")
		if err != nil {
			return errorf("%v", err)
		}
		if err := c.p.register([]string{dst}, []*pathInfo{info}); err != nil {
			return err
		}
	}
	return c.reply(func() { c.out.string(dst) })
}

// newHash is parseHashType plus a hasher; nil for htUnknown.
func newHash(algo string) hash.Hash {
	switch algo {
	case "md5":
		return md5.New()
	case "sha1":
		return sha1.New()
	case "sha256":
		return sha256.New()
	case "sha512":
		return sha512.New()
	}
	return nil
}
