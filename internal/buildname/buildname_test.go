package buildname

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/util/validation"
)

const hash = "0ga1ynkzg5mb6rzx6nb7r8yv9d5vsgvh"

func TestFor(t *testing.T) {
	long := strings.Repeat("a", 200)
	cases := map[string]struct {
		drv, want string
	}{
		"plain":              {"/gnu/store/" + hash + "-hello-2.12.1.drv", "hello-2.12.1-0ga1ynkzg5"},
		"dotted version":     {"/gnu/store/" + hash + "-gcc-toolchain-14.2.0.drv", "gcc-toolchain-14.2.0-0ga1ynkzg5"},
		"underscore and dot": {"/gnu/store/" + hash + "-foo_.bar.drv", "foo-bar-0ga1ynkzg5"},
		"uppercase":          {"/gnu/store/" + hash + "-Python-3.11.drv", "python-3.11-0ga1ynkzg5"},
		"other chars":        {"/gnu/store/" + hash + "-a+b?c=d.drv", "a-b-c-d-0ga1ynkzg5"},
		"runs of separators": {"/gnu/store/" + hash + "-a--b..c-.d.drv", "a-b-c-d-0ga1ynkzg5"},
		"leading digit":      {"/gnu/store/" + hash + "-7zip-23.01.drv", "7zip-23.01-0ga1ynkzg5"},
		"leading dot":        {"/gnu/store/" + hash + "-.hidden-1.drv", "hidden-1-0ga1ynkzg5"},
		"leading separators": {"/gnu/store/" + hash + "-_-+x.drv", "x-0ga1ynkzg5"},
		"trailing dot":       {"/gnu/store/" + hash + "-x..drv", "x-0ga1ynkzg5"},
		"nothing usable":     {"/gnu/store/" + hash + "-_+.drv", "0ga1ynkzg5"},
		"200 characters":     {"/gnu/store/" + hash + "-" + long + ".drv", strings.Repeat("a", 52) + "-0ga1ynkzg5"},
		"cut at a separator": {"/gnu/store/" + hash + "-" + strings.Repeat("b", 51) + "-cdef.drv", strings.Repeat("b", 51) + "-0ga1ynkzg5"},
		"cut after a dot":    {"/gnu/store/" + hash + "-" + strings.Repeat("c", 51) + ".1.drv", strings.Repeat("c", 51) + "-0ga1ynkzg5"},
		"nix store":          {"/nix/store/" + hash + "-hello.drv", "hello-0ga1ynkzg5"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			got, err := For(tc.drv)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("For(%q) = %q, want %q", tc.drv, got, tc.want)
			}
			if len(got) > MaxLen {
				t.Errorf("%q is %d characters, more than %d", got, len(got), MaxLen)
			}
			if errs := validation.IsDNS1123Subdomain(got); len(errs) > 0 {
				t.Errorf("%q is not a DNS-1123 subdomain: %v", got, errs)
			}
			if again, _ := For(tc.drv); again != got {
				t.Errorf("not deterministic: %q then %q", got, again)
			}
		})
	}
}

func TestForRefuses(t *testing.T) {
	for name, drv := range map[string]string{
		"not a drv":     "/gnu/store/" + hash + "-hello",
		"relative":      hash + "-hello.drv",
		"short hash":    "/gnu/store/0ga1ynkzg5-hello.drv",
		"bad hash char": "/gnu/store/" + strings.Replace(hash, "0", "e", 1) + "-hello.drv",
		"empty":         "",
	} {
		t.Run(name, func(t *testing.T) {
			if got, err := For(drv); err == nil {
				t.Errorf("For(%q) = %q, want an error", drv, got)
			}
		})
	}
}

// Every byte a .drv name may hold maps onto a valid name.
func FuzzFor(f *testing.F) {
	f.Add("hello-2.12.1")
	f.Add("foo_.bar")
	f.Add(".x.")
	f.Fuzz(func(t *testing.T, name string) {
		got, err := For("/gnu/store/" + hash + "-" + name + ".drv")
		if err != nil {
			return // e.g. a '/' in name
		}
		if len(got) > MaxLen || len(validation.IsDNS1123Subdomain(got)) > 0 {
			t.Errorf("name %q gives %q", name, got)
		}
	})
}
