// Package buildname names Builds after their derivations: deterministic, so submitting the same
// derivation twice finds the same Build, and always a valid object name (a DNS-1123 label), even
// for store names with '_', '+', capitals or 200 characters.
package buildname

import (
	"path"
	"strings"
)

// hashLen is how much of the store hash the name keeps: 50 bits, enough to tell apart the
// derivations of one name in a namespace.
const hashLen = 10

// maxLen is the bound of a DNS-1123 label (names that may also become label values).
const maxLen = 63

// For returns the Build name of a .drv path: "<name>-<first 10 characters of the hash>", the name
// lowercased, other characters than [a-z0-9-] turned into '-', runs of '-' collapsed, trimmed to fit.
func For(drvPath string) string {
	base := strings.TrimSuffix(path.Base(drvPath), ".drv")
	hash, name, ok := strings.Cut(base, "-")
	if !ok || len(hash) < hashLen {
		hash, name = base, ""
	}
	hash = sanitize(hash)
	if len(hash) > hashLen {
		hash = hash[:hashLen]
	}
	name = sanitize(name)
	if room := maxLen - len(hash) - 1; len(name) > room {
		name = strings.Trim(name[:room], "-")
	}
	if name == "" {
		return "drv-" + hash
	}
	return name + "-" + hash
}

func sanitize(s string) string {
	var b strings.Builder
	dash := false
	for _, c := range strings.ToLower(s) {
		if c >= 'a' && c <= 'z' || c >= '0' && c <= '9' {
			b.WriteRune(c)
			dash = false
		} else if !dash {
			b.WriteByte('-')
			dash = true
		}
	}
	return strings.Trim(b.String(), "-")
}
