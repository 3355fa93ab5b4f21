package guixpeer

import (
	"fmt"
	"math"
	"sort"
	"strings"
)

// GC actions (GCOptions::GCAction in store-api.hh).
const (
	gcReturnLive     = 0
	gcReturnDead     = 1
	gcDeleteDead     = 2
	gcDeleteSpecific = 3
)

// gcState is LocalStore::GCState for the in-memory store.
type gcState struct {
	c            *conn
	action       uint64
	maxFreed     uint64
	roots        map[string]bool
	alive, dead  map[string]bool
	deleted      map[string]bool
	bytesFreed   uint64
	shouldDelete bool
	limitReached bool
}

// collectGarbage is the wopCollectGarbage case and
// LocalStore::collectGarbage. The roots are the temporary roots of the
// open connections (the peer has no permanent roots), gc-keep-derivations
// is on and gc-keep-outputs off, as by default.
func (c *conn) collectGarbage() error {
	if c.remote {
		return errorf("Garbage collection is disabled for remote hosts.")
	}
	action, err := c.in.int()
	if err != nil {
		return err
	}
	toDelete, err := c.in.storePaths()
	if err != nil {
		return err
	}
	ignoreLiveness, err := c.in.int()
	if err != nil {
		return err
	}
	maxFreed, err := c.in.longLong()
	if err != nil {
		return err
	}
	if _, err := c.in.int(); err != nil { // obsolete field
		return err
	}
	if c.minor() >= 5 {
		for i := 0; i < 2; i++ { // removed options
			if _, err := c.in.int(); err != nil {
				return err
			}
		}
	}
	c.startWork()
	if ignoreLiveness != 0 {
		return errorf("you are not allowed to ignore liveness")
	}

	st := &gcState{
		c:            c,
		action:       action,
		maxFreed:     maxFreed,
		roots:        map[string]bool{},
		alive:        map[string]bool{},
		dead:         map[string]bool{},
		deleted:      map[string]bool{},
		shouldDelete: action == gcDeleteDead || action == gcDeleteSpecific,
	}
	if err := c.printMsg(lvlError, "finding garbage collector roots..."); err != nil {
		return err
	}
	c.p.mu.Lock()
	for lc := range c.p.live {
		for r := range lc.tempRoots {
			st.roots[r] = true
		}
	}
	c.p.mu.Unlock()

	if action == gcDeleteSpecific {
		for _, p := range toDelete {
			if err := st.tryToDelete(p); err != nil {
				return err
			}
			if !st.dead[p] {
				return errorf("cannot delete path `%s' since it is still alive", p)
			}
		}
	} else if maxFreed > 0 {
		msg := "determining live/dead paths..."
		if st.shouldDelete {
			msg = "deleting garbage..."
		}
		if err := c.printMsg(lvlError, "%s", msg); err != nil {
			return err
		}
		// Guix visits the store in random order; the peer in sorted order.
		for _, p := range c.p.allValid() {
			if st.limitReached {
				break
			}
			if err := st.tryToDelete(p); err != nil {
				return err
			}
		}
	}

	var paths []string
	switch action {
	case gcReturnLive:
		paths = keys(st.alive)
	case gcReturnDead:
		paths = keys(st.dead)
	default:
		paths = keys(st.deleted)
		if err := c.printMsg(lvlInfo, "deleting `%s/trash'", StoreDir); err != nil {
			return err
		}
		if st.shouldDelete {
			if err := c.printMsg(lvlError, "deleting unused links..."); err != nil {
				return err
			}
			if err := c.printMsg(lvlInfo, "note: currently hard linking saves %s", showBytes(0)); err != nil {
				return err
			}
		}
	}
	return c.reply(func() {
		c.out.strings(paths)
		c.out.int(st.bytesFreed)
		c.out.int(0) // obsolete
	})
}

// tryToDelete is LocalStore::tryToDelete.
func (st *gcState) tryToDelete(p string) error {
	visited := map[string]bool{}
	if st.canReachRoot(visited, p) {
		return nil
	}
	for v := range visited {
		st.dead[v] = true
	}
	if st.shouldDelete {
		return st.deletePathRecursive(p)
	}
	return nil
}

// canReachRoot is LocalStore::canReachRoot: a path is alive if it is a
// root or something alive refers to it; with gc-keep-derivations a
// derivation is also kept by its valid outputs whose deriver it is.
func (st *gcState) canReachRoot(visited map[string]bool, p string) bool {
	if visited[p] || st.dead[p] {
		return false
	}
	if st.alive[p] {
		return true
	}
	if st.roots[p] {
		st.alive[p] = true
		return true
	}
	visited[p] = true
	info, ok := st.c.p.info(p)
	if !ok {
		return false
	}
	incoming := st.c.p.referrers(p)
	if info.drv != nil {
		for _, o := range info.drv.Outputs {
			if oi, ok := st.c.p.info(o.Path); ok && oi.deriver == p {
				incoming = append(incoming, o.Path)
			}
		}
	}
	sort.Strings(incoming)
	for _, i := range incoming {
		if i != p && st.canReachRoot(visited, i) {
			st.alive[p] = true
			return true
		}
	}
	return false
}

// deletePathRecursive is LocalStore::deletePathRecursive: referrers go
// first. A path that is not valid does not exist in the peer's store.
func (st *gcState) deletePathRecursive(p string) error {
	if st.limitReached {
		return nil
	}
	info, ok := st.c.p.info(p)
	if !ok {
		return nil
	}
	for _, r := range st.c.p.referrers(p) {
		if r != p {
			if err := st.deletePathRecursive(r); err != nil {
				return err
			}
		}
	}
	if st.limitReached {
		return nil
	}
	st.c.p.mu.Lock()
	delete(st.c.p.valid, p) // invalidatePathChecked
	st.c.p.mu.Unlock()
	var progress string
	if st.maxFreed != math.MaxUint64 {
		fraction := float64(st.bytesFreed) / float64(st.maxFreed)
		progress = fmt.Sprintf("%d%%", uint(min(fraction, 1)*100))
	} else {
		progress = showBytes(st.bytesFreed)
	}
	if err := st.c.printMsg(lvlInfo, "[%s] deleting '%s'", progress, p); err != nil {
		return err
	}
	st.deleted[p] = true
	st.bytesFreed += uint64(len(info.nar))
	if st.bytesFreed > st.maxFreed {
		st.limitReached = true // GCLimitReached
		return st.c.printMsg(lvlInfo, "deleted or invalidated more than %d bytes; stopping", st.maxFreed)
	}
	return nil
}

// showBytes is util.cc's.
func showBytes(n uint64) string {
	return fmt.Sprintf("%.2f MiB", float64(n)/(1024*1024))
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		if strings.HasPrefix(k, StoreDir+"/") {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}
