package buildname

import (
	"regexp"
	"strings"
	"testing"
)

var label = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

func TestFor(t *testing.T) {
	const h = "0ga1ynkzg5mb6rzx6nb7r8yv9d5vsgvh"
	for _, tc := range []struct{ drv, want string }{
		{"/gnu/store/" + h + "-hello-2.12.1.drv", "hello-2-12-1-0ga1ynkzg5"},
		{"/gnu/store/" + h + "-foo_.bar.drv", "foo-bar-0ga1ynkzg5"},
		{"/gnu/store/" + h + "-gcc-toolchain-14.2.0.drv", "gcc-toolchain-14-2-0-0ga1ynkzg5"},
		{"/gnu/store/" + h + "-.hidden.drv", "hidden-0ga1ynkzg5"},
		{"/gnu/store/" + h + "-9base.drv", "9base-0ga1ynkzg5"},
		{"/gnu/store/" + h + "-GTK+_3.drv", "gtk-3-0ga1ynkzg5"},
		{"/gnu/store/" + h + "-___.drv", "drv-0ga1ynkzg5"},
		{"/gnu/store/" + h + "-" + strings.Repeat("x", 200) + ".drv", strings.Repeat("x", 52) + "-0ga1ynkzg5"},
	} {
		got := For(tc.drv)
		if got != tc.want {
			t.Errorf("For(%s) = %q, want %q", tc.drv, got, tc.want)
		}
		if len(got) > 63 || !label.MatchString(got) {
			t.Errorf("For(%s) = %q is not a DNS-1123 label", tc.drv, got)
		}
	}
}
