// Package cli holds what the project's commands share in reading their command lines.
package cli

import "strings"

// SplitList splits a comma-separated flag value, trimming blanks and dropping empty items, so
// "a, b,,c" and "a,b,c" mean the same.
func SplitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
