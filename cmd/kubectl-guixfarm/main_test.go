package main

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

const drv = "/gnu/store/0ga1ynkzg5mb6rzx6nb7r8yv9d5vsgvh-hello-2.12.1.drv"

// The command line is parsed whatever the order of flags and command; every check that needs no
// network fails first, naming the flag.
func TestCommandLine(t *testing.T) {
	vars := map[string]string{"GUIXFARM_BUCKET_ENDPOINT": "http://127.0.0.1:1", "GUIXFARM_BUCKET": "farm"}
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string // in the error; "" for --help
		out  string // in stdout
	}{
		{name: "help", args: []string{"--help"}, out: "Commands:"},
		{name: "help command", args: []string{"help", "submit"}, out: "--all-missing"},
		{name: "command help after flags", args: []string{"-n", "farm", "logs", "--help"}, out: "--attempt"},
		{name: "no command", args: []string{"-n", "farm"}, want: "no command"},
		{name: "unknown command", args: []string{"frob"}, want: `unknown command "frob"`},
		{name: "flag of another command", args: []string{"logs", "--priority", "1", "x"}, want: "unknown flag: --priority"},
		{name: "namespace value is not the command", args: []string{"-n", "logs", "submit", "--priority", "2000000", drv}, want: "--priority 2000000 is out of range"},
		{name: "command flag before the command", args: []string{"--priority=2000000", "submit", drv}, want: "--priority 2000000"},
		{name: "flags after the derivation", args: []string{"submit", drv, "-l", "bad key=v"}, want: `-l "bad key=v"`},
		{name: "label without value", args: []string{"submit", "-l", "tag", drv}, want: "want key=value"},
		{name: "timeout", args: []string{"submit", "--timeout", "forever", drv}, want: `"--timeout"`},
		{name: "no derivation", args: []string{"submit"}, want: "no derivation given"},
		{name: "not a derivation", args: []string{"submit", "/gnu/store/0ga1ynkzg5mb6rzx6nb7r8yv9d5vsgvh-hello"}, want: "does not end in .drv"},
		{name: "other store", args: []string{"submit", "--store-dir", "/nix/store", drv}, want: "--store-dir is /nix/store"},
		{name: "no bucket", args: []string{"submit", drv}, env: map[string]string{}, want: "--bucket-endpoint is not set"},
		{name: "no credentials", args: []string{"submit", drv}, want: "$AWS_ACCESS_KEY_ID"},
		{name: "unsigned", args: []string{"submit", drv}, env: map[string]string{"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
			"GUIXFARM_BUCKET_ENDPOINT": "http://127.0.0.1:1", "GUIXFARM_BUCKET": "farm"}, want: "--signing-keys is not set"},
		{name: "logs needs one build", args: []string{"logs", "a", "b", "-f"}, want: "give one Build name"},
		{name: "logs attempt", args: []string{"logs", "a", "--attempt", "-1"}, want: "--attempt -1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vs := vars
			if tc.env != nil {
				vs = tc.env
			}
			var out, errOut bytes.Buffer
			err := run(context.Background(), tc.args, env{Stdout: &out, Stderr: &errOut, Getenv: func(k string) string { return vs[k] }})
			switch {
			case tc.want == "" && !errors.Is(err, pflag.ErrHelp):
				t.Errorf("error %v, want help", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("error %v, want one saying %q", err, tc.want)
			}
			if !strings.Contains(out.String(), tc.out) {
				t.Errorf("stdout lacks %q:\n%s", tc.out, out.String())
			}
		})
	}
}

func TestSecondsFlag(t *testing.T) {
	for in, want := range map[string]int32{"36000": 36000, "10h": 36000, "90m": 5400, "1.5s": 2} {
		var v int32
		if err := (secondsFlag{&v}).Set(in); err != nil || v != want {
			t.Errorf("%s: %d, %v; want %d", in, v, err, want)
		}
	}
	for _, in := range []string{"0", "-5", "500ms", "100000000h", "x"} {
		var v int32
		if err := (secondsFlag{&v}).Set(in); err == nil {
			t.Errorf("%s: accepted as %d", in, v)
		}
	}
}
