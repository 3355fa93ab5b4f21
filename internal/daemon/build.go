package daemon

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// BuildMode is the mode of BuildPaths.
type BuildMode uint64

const (
	BuildNormal BuildMode = 0
	BuildRepair BuildMode = 1 // rebuild corrupt paths (trusted clients only)
	BuildCheck  BuildMode = 2 // rebuild and compare with the valid outputs
)

// DerivedPath is a .drv with the outputs to build. Outputs must be explicit:
// a bare .drv means "build everything" to Guix but "make the .drv valid" to
// Nix >= 1.30, so BuildPaths refuses it. A path that is not a .drv (a
// source) may have no outputs: it is then made valid by substitution.
type DerivedPath struct {
	Drv     string
	Outputs []string
}

// String is the wire form, "drv!out,lib".
func (p DerivedPath) String() string {
	if len(p.Outputs) == 0 {
		return p.Drv
	}
	return p.Drv + "!" + strings.Join(p.Outputs, ",")
}

func (c *Conn) checkDerivedPath(p DerivedPath) error {
	if err := checkPaths("build paths", p.Drv); err != nil {
		return err
	}
	if len(p.Outputs) == 0 {
		if strings.HasSuffix(p.Drv, ".drv") {
			return fmt.Errorf("daemon: build paths: %w: %s: the outputs to build must be named (drv!out)", ErrInvalidArgument, p.Drv)
		}
		return nil
	}
	for _, out := range p.Outputs {
		switch {
		case out == "" || strings.ContainsAny(out, "!,"):
			return fmt.Errorf("daemon: build paths: %w: %s: invalid output name %q", ErrInvalidArgument, p.Drv, out)
		case out == "*" && c.dialect == Guix:
			// Only Nix knows "!*"; Guix would look for an output named "*".
			return fmt.Errorf("daemon: build paths: %w: %s: Guix has no \"all outputs\" wildcard; name the outputs", ErrInvalidArgument, p.Drv)
		}
	}
	return nil
}

// BuildPaths builds (or substitutes) paths, streaming the log to sink (may
// be nil) while it runs. A build failure is an *Error (use errors.As) whose
// Message is the daemon's, and leaves the Conn usable.
func (c *Conn) BuildPaths(ctx context.Context, paths []DerivedPath, mode BuildMode, sink LogSink) error {
	strs := make([]string, len(paths))
	for i, p := range paths {
		if err := c.checkDerivedPath(p); err != nil {
			return err
		}
		strs[i] = p.String()
	}
	name := "build paths"
	if len(strs) == 1 {
		name = "build " + strs[0]
	}
	return c.simple(ctx, name, sink,
		func(e *encoder) {
			e.u64(opBuildPaths)
			e.strings(strs)
			// Both daemons read the mode from clients of minor >= 15.
			e.u64(uint64(mode))
		},
		(*op).readOK)
}

// Options are the build settings of a connection, sent by SetOptions.
type Options struct {
	// SubstituteURLs replace the daemon's substituters when not empty
	// (Nix "substituters", Guix "substitute-urls"). Nix honours them only
	// from trusted users or for URLs it already trusts.
	SubstituteURLs []string
	// TrustedPublicKeys replace Nix's "trusted-public-keys" when not empty
	// (trusted users only). Guix's trust is /etc/guix/acl: ignored.
	TrustedPublicKeys []string
	UseSubstitutes    bool
	KeepFailed        bool
	KeepGoing         bool
	TryFallback       bool
	// BuildTimeout and MaxSilentTime limit a build; 0 leaves the daemon's
	// setting (a timeout) or means none (max-silent-time, a protocol field
	// in Nix and old Guix). Whole seconds.
	BuildTimeout  time.Duration
	MaxSilentTime time.Duration
	// Cores is the builders' NIX_BUILD_CORES; 0 means all cores to Nix
	// and leaves a Guix daemon (>= 0x61) at its own setting.
	Cores int
	// MaxJobs is the number of builds run at once. 0 is sent as 1 to Nix
	// (which takes 0 literally, as "build nothing locally") and to Guix
	// below 0x61, and leaves a newer Guix daemon at its own setting.
	MaxJobs int
	// PrintBuildTrace asks Guix for "@ …" trace lines (LogTrace).
	PrintBuildTrace bool
	// MultiplexedBuildOutput asks Guix to frame builder output as
	// "@ build-log <pid> <len>", which tells it apart from daemon messages.
	MultiplexedBuildOutput bool
	// Overrides are extra name/value settings, sent after the ones above.
	Overrides [][2]string
}

// Verbosity levels we send: the daemon drops log messages above them.
// Nix's levels are error=0, warn=1, …; Guix's error=0, info=1, …. Guix
// sends builder output only when verbosity >= buildVerbosity, so both stay
// at 0 there; Nix gets warnings too ("ignoring untrusted substituter").
const (
	nixVerbosity  = 1 // lvlWarn
	guixVerbosity = 0 // lvlError
	// buildVerbosity 0 (lvlError): Nix 2.8 turns it into verbose-build
	// (send build log lines), Guix compares it with verbosity as above.
	buildVerbosity = 0
)

func seconds(d time.Duration) uint64 {
	if d <= 0 {
		return 0
	}
	return uint64((d + time.Second - 1) / time.Second) // round up: never shorten a limit to 0
}

// SetOptions sends the build settings (op 19) in the negotiated dialect's
// layout (§1.5). It always sets Nix's narinfo negative-cache TTL to 0 so
// that a path missing from a substituter is looked up again next time
// (Guix has no such daemon setting). Settings last for the connection.
func (c *Conn) SetOptions(ctx context.Context, o Options) error {
	maxJobs := uint64(max(o.MaxJobs, 1))
	cores := uint64(max(o.Cores, 0))
	var overrides [][2]string
	set := func(name, value string) { overrides = append(overrides, [2]string{name, value}) }
	m := minor(c.version)
	if c.dialect == Nix {
		if len(o.SubstituteURLs) > 0 {
			set("substituters", strings.Join(o.SubstituteURLs, " "))
		}
		if len(o.TrustedPublicKeys) > 0 {
			set("trusted-public-keys", strings.Join(o.TrustedPublicKeys, " "))
		}
		if o.BuildTimeout > 0 {
			set("timeout", strconv.FormatUint(seconds(o.BuildTimeout), 10))
		}
		set("narinfo-cache-negative-ttl", "0")
	} else {
		if len(o.SubstituteURLs) > 0 {
			set("substitute-urls", strings.Join(o.SubstituteURLs, " "))
		}
		if o.BuildTimeout > 0 {
			set("build-timeout", strconv.FormatUint(seconds(o.BuildTimeout), 10))
		}
		if m >= 0x61 {
			// These three left the fixed fields in 0x61.
			if o.MaxSilentTime > 0 {
				set("build-max-silent-time", strconv.FormatUint(seconds(o.MaxSilentTime), 10))
			}
			if o.MaxJobs > 0 {
				set("build-max-jobs", strconv.Itoa(o.MaxJobs))
			}
			if o.Cores > 0 {
				set("build-cores", strconv.Itoa(o.Cores))
			}
		}
		set("multiplexed-build-output", strconv.FormatBool(o.MultiplexedBuildOutput))
	}
	overrides = append(overrides, o.Overrides...)

	err := c.simple(ctx, "set options", nil, func(e *encoder) {
		e.u64(opSetOptions)
		e.bool(o.KeepFailed)
		e.bool(o.KeepGoing)
		e.bool(o.TryFallback)
		if c.dialect == Nix {
			e.u64(nixVerbosity)
		} else {
			e.u64(guixVerbosity)
		}
		if c.dialect == Nix || m < 0x61 {
			e.u64(maxJobs)
			e.u64(seconds(o.MaxSilentTime))
		}
		e.bool(true)          // useBuildHook (ignored by Nix 2.8 and most Guix builds)
		e.u64(buildVerbosity) // m >= 4 for both: we speak nothing older
		e.u64(0)              // logType, obsolete
		e.bool(o.PrintBuildTrace && c.dialect == Guix)
		if c.dialect == Nix || m < 0x61 {
			e.u64(cores)
		}
		e.bool(o.UseSubstitutes)
		e.u64(uint64(len(overrides)))
		for _, kv := range overrides {
			e.string(kv[0])
			e.string(kv[1])
		}
	}, func(op *op) error {
		// No reply follows LAST. Recorded here, while the operation holds
		// the Conn, for the loggers of later operations.
		if c.dialect == Guix {
			c.multiplexed = o.MultiplexedBuildOutput
		}
		return nil
	})
	return err
}
