package planner

// heapOrder is how a posHeap compares build indexes and where each build keeps its position, so
// a key change is an O(log n) fix.
type heapOrder interface {
	less(a, b int32) bool
	setPos(bi, pos int32)
}

// posHeap is a binary heap of build indexes that knows every item's position.
type posHeap[O heapOrder] struct {
	o     O
	items []int32
}

func (h *posHeap[O]) set(i int, bi int32) {
	h.items[i] = bi
	h.o.setPos(bi, int32(i))
}

// init restores the heap order of all items (after keys changed in bulk): O(n).
func (h *posHeap[O]) init() {
	for i, bi := range h.items {
		h.o.setPos(bi, int32(i))
	}
	for i := len(h.items)/2 - 1; i >= 0; i-- {
		h.down(i)
	}
}

func (h *posHeap[O]) push(bi int32) {
	h.items = append(h.items, bi)
	h.set(len(h.items)-1, bi)
	h.up(len(h.items) - 1)
}

func (h *posHeap[O]) remove(pos int32) {
	i := int(pos)
	last := len(h.items) - 1
	bi := h.items[i]
	if i != last {
		h.set(i, h.items[last])
	}
	h.items = h.items[:last]
	h.o.setPos(bi, -1)
	if i != last {
		h.fix(int32(i))
	}
}

func (h *posHeap[O]) fix(pos int32) {
	if !h.down(int(pos)) {
		h.up(int(pos))
	}
}

func (h *posHeap[O]) up(i int) {
	x := h.items[i]
	for i > 0 {
		parent := (i - 1) / 2
		if !h.o.less(x, h.items[parent]) {
			break
		}
		h.set(i, h.items[parent])
		i = parent
	}
	h.set(i, x)
}

func (h *posHeap[O]) down(i0 int) bool {
	n := len(h.items)
	i := i0
	x := h.items[i]
	for {
		l := 2*i + 1
		if l >= n {
			break
		}
		c := l
		if r := l + 1; r < n && h.o.less(h.items[r], h.items[l]) {
			c = r
		}
		if !h.o.less(h.items[c], x) {
			break
		}
		h.set(i, h.items[c])
		i = c
	}
	h.set(i, x)
	return i > i0
}

// byRank orders a class's offerable builds best first (Planner.better), at build.heapPos.
type byRank struct{ p *Planner }

func (o byRank) less(a, b int32) bool { return o.p.better(a, b) }
func (o byRank) setPos(bi, pos int32) { o.p.builds[bi].heapPos = pos }

// byNotBefore orders deferred builds by NotBefore, at build.defPos.
type byNotBefore struct{ p *Planner }

func (o byNotBefore) less(a, b int32) bool {
	x, y := &o.p.builds[a], &o.p.builds[b]
	if x.notBefore != y.notBefore {
		return x.notBefore < y.notBefore
	}
	return a < b
}
func (o byNotBefore) setPos(bi, pos int32) { o.p.builds[bi].defPos = pos }

// buildHeap is a class's heap of offerable builds; defHeap the heap of deferred builds.
type (
	buildHeap = posHeap[byRank]
	defHeap   = posHeap[byNotBefore]
)
