package main

import (
	"bufio"
	"io"
	"regexp"
	"strconv"
	"strings"
)

// result is one benchmark's figures: unit -> value ("ns/op", "B/op", "MB/s", custom units).
type result struct {
	pkg     string
	metrics map[string]float64
}

// run is what one `go test -bench` output holds.
type run struct {
	results map[string]result // by benchmark name without the -GOMAXPROCS suffix
	skipped map[string]string // benchmark -> "skipped: reason" (--- SKIP and its log line)
	failed  map[string]bool   // benchmarks with --- FAIL
	notes   map[string]string // package section (### pkg marker) -> why it ran nothing
}

// marker starts the output of one package's run in the raw file (written by hack/bench.sh).
const marker = "### pkg "

var (
	procsSuffix = regexp.MustCompile(`-\d+$`)
	logLine     = regexp.MustCompile(`^\s+\S+\.go:\d+: `)
	// iterations, then value/unit pairs.
	figures = regexp.MustCompile(`^\s*\d+\s+(?:[-+0-9.eE]+\s+\S+\s*)+$`)
)

// parse reads `go test -v -bench` output, several runs concatenated. It tolerates anything
// in between (logs, child-process output), and a result whose figures come on a later line
// than its name. A benchmark reported twice keeps its last figures.
func parse(r io.Reader) (run, error) {
	out := run{results: map[string]result{}, skipped: map[string]string{}, failed: map[string]bool{}, notes: map[string]string{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var pkg, section, pending, lastLog string
	for sc.Scan() {
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, marker):
			section, pending, lastLog = strings.TrimSpace(line[len(marker):]), "", ""
			continue
		case strings.HasPrefix(line, "pkg: "):
			pkg = strings.TrimSpace(line[len("pkg: "):])
			continue
		case strings.HasPrefix(trimmed, "--- SKIP: "), strings.HasPrefix(trimmed, "--- FAIL: "):
			f := strings.Fields(trimmed)
			if len(f) < 3 {
				continue
			}
			name := benchName(f[2])
			if f[1] == "FAIL:" {
				out.failed[name] = true
			} else if lastLog != "" {
				out.skipped[name] = "skipped: " + lastLog
			} else {
				out.skipped[name] = "skipped"
			}
			continue
		case logLine.MatchString(line):
			// A benchmark's log, "    file_test.go:12: message" (with -v, a skip's reason
			// comes before its --- SKIP line).
			_, lastLog, _ = strings.Cut(trimmed, ": ")
			continue
		case strings.HasPrefix(trimmed, "skipping") && section != "":
			out.notes[section] = trimmed // a TestMain that found no test bed
			continue
		}
		if strings.HasPrefix(line, "Benchmark") {
			name, rest, _ := strings.Cut(line, "\t")
			f := strings.Fields(name)
			if len(f) == 0 {
				continue
			}
			if len(f) > 1 { // not the name line of a result
				continue
			}
			pending, lastLog = benchName(f[0]), ""
			if !figures.MatchString(rest) {
				continue // a -v name line, or figures to follow the benchmark's own output
			}
			line = rest
		}
		if pending == "" || !figures.MatchString(line) {
			continue
		}
		m, err := metrics(line)
		if err != nil {
			return out, err
		}
		out.results[pending] = result{pkg: pkg, metrics: m}
		pending = ""
	}
	return out, sc.Err()
}

// benchName drops the -GOMAXPROCS suffix testing appends to every name.
func benchName(s string) string { return procsSuffix.ReplaceAllString(s, "") }

// metrics reads "N v1 u1 v2 u2 ...".
func metrics(line string) (map[string]float64, error) {
	f := strings.Fields(line)
	m := make(map[string]float64, len(f)/2)
	for i := 1; i+1 < len(f); i += 2 {
		v, err := strconv.ParseFloat(f[i], 64)
		if err != nil {
			return nil, err
		}
		m[f[i+1]] = v
	}
	return m, nil
}
