package farm

import (
	"strings"

	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/config"
)

func stringsReader(s string) *strings.Reader { return strings.NewReader(s) }

// ctrlConfigUnique lets several managers in one test binary reuse controller names.
func ctrlConfigUnique() config.Controller {
	return config.Controller{SkipNameValidation: ptr.To(true)}
}

// APIServerPID is the envtest apiserver's process id (0 if it is not running).
func (e *Env) APIServerPID() int { return e.apiServerPid() }
