package planner

// buildHeap is a keyed binary heap of offerable builds, best first (Planner.better). Each
// build knows its position (build.heapPos), so a key change is an O(log n) fix.
type buildHeap struct{ items []int32 }

func (h *buildHeap) set(p *Planner, i int, bi int32) {
	h.items[i] = bi
	p.builds[bi].heapPos = int32(i)
}

// init restores the heap order of all items (after keys changed in bulk): O(n).
func (h *buildHeap) init(p *Planner) {
	for i, bi := range h.items {
		p.builds[bi].heapPos = int32(i)
	}
	for i := len(h.items)/2 - 1; i >= 0; i-- {
		h.down(p, i)
	}
}

func (h *buildHeap) push(p *Planner, bi int32) {
	h.items = append(h.items, bi)
	p.builds[bi].heapPos = int32(len(h.items) - 1)
	h.up(p, len(h.items)-1)
}

func (h *buildHeap) remove(p *Planner, pos int32) {
	i := int(pos)
	last := len(h.items) - 1
	bi := h.items[i]
	if i != last {
		h.set(p, i, h.items[last])
	}
	h.items = h.items[:last]
	p.builds[bi].heapPos = -1
	if i != last {
		h.fix(p, int32(i))
	}
}

func (h *buildHeap) fix(p *Planner, pos int32) {
	if !h.down(p, int(pos)) {
		h.up(p, int(pos))
	}
}

func (h *buildHeap) up(p *Planner, i int) {
	x := h.items[i]
	for i > 0 {
		parent := (i - 1) / 2
		if !p.better(x, h.items[parent]) {
			break
		}
		h.set(p, i, h.items[parent])
		i = parent
	}
	h.set(p, i, x)
}

func (h *buildHeap) down(p *Planner, i0 int) bool {
	n := len(h.items)
	i := i0
	x := h.items[i]
	for {
		l := 2*i + 1
		if l >= n {
			break
		}
		c := l
		if r := l + 1; r < n && p.better(h.items[r], h.items[l]) {
			c = r
		}
		if !p.better(h.items[c], x) {
			break
		}
		h.set(p, i, h.items[c])
		i = c
	}
	h.set(p, i, x)
	return i > i0
}

// defHeap orders deferred builds by NotBefore (build.defPos).
type defHeap struct {
	p     *Planner
	items []int32
}

func (h *defHeap) less(a, b int32) bool {
	x, y := &h.p.builds[a], &h.p.builds[b]
	if x.notBefore != y.notBefore {
		return x.notBefore < y.notBefore
	}
	return a < b
}

func (h *defHeap) set(i int, bi int32) {
	h.items[i] = bi
	h.p.builds[bi].defPos = int32(i)
}

func (h *defHeap) push(bi int32) {
	h.items = append(h.items, bi)
	h.set(len(h.items)-1, bi)
	h.up(len(h.items) - 1)
}

func (h *defHeap) remove(pos int32) {
	i := int(pos)
	last := len(h.items) - 1
	bi := h.items[i]
	if i != last {
		h.set(i, h.items[last])
	}
	h.items = h.items[:last]
	h.p.builds[bi].defPos = -1
	if i != last {
		h.fix(int32(i))
	}
}

func (h *defHeap) fix(pos int32) {
	if !h.down(int(pos)) {
		h.up(int(pos))
	}
}

func (h *defHeap) up(i int) {
	x := h.items[i]
	for i > 0 {
		parent := (i - 1) / 2
		if !h.less(x, h.items[parent]) {
			break
		}
		h.set(i, h.items[parent])
		i = parent
	}
	h.set(i, x)
}

func (h *defHeap) down(i0 int) bool {
	n := len(h.items)
	i := i0
	x := h.items[i]
	for {
		l := 2*i + 1
		if l >= n {
			break
		}
		c := l
		if r := l + 1; r < n && h.less(h.items[r], h.items[l]) {
			c = r
		}
		if !h.less(h.items[c], x) {
			break
		}
		h.set(i, h.items[c])
		i = c
	}
	h.set(i, x)
	return i > i0
}
