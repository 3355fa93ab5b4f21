// Package publishing is the farm's publisher service: the one component that holds the bucket's
// write credentials and the narinfo signing keys (it runs in the controller), so that agents,
// which run untrusted builds next to a privileged daemon, hold neither (docs/security.md).
//
// The protocol is JSON over HTTP, every request authenticated by the agent's ServiceAccount token
// (Bearer), bound to its Pod, whose name is the agent's (TokenReviewer):
//
//	POST /v1/uploads       the attempt it holds and its items (store path, NarHash, NarSize,
//	                       references, deriver, CA, output flag): per item, published already
//	                       (nothing to do), or a presigned PUT URL for exactly its
//	                       content-addressed nar key, write-once, expiring in minutes, and the
//	                       compression to use
//	PUT  <presigned URL>   the agent uploads each nar, compressed as told (no credentials)
//	POST /v1/commit        the same items, with what was uploaded: the service verifies every
//	                       nar (its size, or a full read-back: NarHash, NarSize) and writes the
//	                       signed narinfos in closure order, checking afresh right before each
//	                       output's narinfo that the agent still holds the attempt
//	POST /v1/logs          a presigned PUT URL for the log of an attempt the agent holds
//	POST /v1/logs/commit   make that log the derivation's log (log/<drv>)
//	POST /v1/probe         who the token says the agent is (its health check)
//	GET  /healthz          no authentication
//
// Every request is checked afresh against the apiserver: the Build's status.attempt must name the
// agent the token names, with the attempt number and Build UID the request gives.
package publishing

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/guixfarm/guix-farm/internal/bucket"
)

// Paths of the service.
const (
	PathUploads   = "/v1/uploads"
	PathCommit    = "/v1/commit"
	PathLogs      = "/v1/logs"
	PathLogCommit = "/v1/logs/commit"
	PathProbe     = "/v1/probe"
	PathHealth    = "/healthz"
)

// AttemptRef names the attempt an agent publishes for: a Build (namespace, name and UID, so a
// Build deleted and made again under the same name is another) and its attempt number
// (status.attemptCount when it was claimed).
type AttemptRef struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	UID       string `json:"uid"`
	Attempt   int32  `json:"attempt"`
}

func (a AttemptRef) String() string {
	return fmt.Sprintf("%s/%s (uid %s) attempt %d", a.Namespace, a.Name, a.UID, a.Attempt)
}

// Item is one store path to publish, as the agent's daemon reports it (PathInfo).
type Item struct {
	Path       string   `json:"path"`
	NarHash    string   `json:"narHash"`
	NarSize    uint64   `json:"narSize"`
	References []string `json:"references,omitempty"`
	Deriver    string   `json:"deriver,omitempty"`
	CA         string   `json:"ca,omitempty"`
	// Output marks the attempt's outputs (the rest is their closure).
	Output bool `json:"output,omitempty"`
}

// UploadsRequest asks for the uploads of an attempt's items.
type UploadsRequest struct {
	Attempt AttemptRef `json:"attempt"`
	Items   []Item     `json:"items"`
}

// UploadsResponse answers an UploadsRequest, item by item in its order.
type UploadsResponse struct {
	// Compression is how the agent must compress the nars it uploads.
	Compression string       `json:"compression"`
	Items       []ItemUpload `json:"items"`
}

// ItemUpload is what the agent does with one item.
type ItemUpload struct {
	Path string `json:"path"`
	// Published: the bucket has the item with the same NarHash, its nar too. Nothing to do.
	Published bool `json:"published,omitempty"`
	// NarKey is where the item's nar goes (content-addressed by NarHash).
	NarKey string `json:"narKey,omitempty"`
	// Upload, when set, is the presigned PUT of the nar, compressed as the response says. When
	// neither Published nor Upload is set, the nar is in the bucket already (the same content
	// under another path): nothing to upload, the commit verifies it.
	Upload *bucket.PresignedPut `json:"upload,omitempty"`
}

// CommitRequest asks the service to verify the uploads and write the narinfos.
type CommitRequest struct {
	Attempt AttemptRef `json:"attempt"`
	// Compression the nars were uploaded with (the one the uploads response gave).
	Compression string       `json:"compression"`
	Items       []CommitItem `json:"items"`
}

// CommitItem is an item and, when the agent uploaded its nar, what it uploaded.
type CommitItem struct {
	Item
	FileSize int64  `json:"fileSize,omitempty"`
	FileHash string `json:"fileHash,omitempty"`
}

// CommitResponse says what was published, item by item in the request's order.
type CommitResponse struct {
	Items []Committed `json:"items"`
}

// Committed is one item published.
type Committed struct {
	Path    string `json:"path"`
	NarHash string `json:"narHash"`
	// AlreadyPresent: the bucket had it; nothing was written.
	AlreadyPresent bool `json:"alreadyPresent,omitempty"`
}

// LogRequest names an attempt's log: the derivation and the attempt number (the Build is the one
// of that derivation, in the agent's namespace, whose attempt the agent holds).
type LogRequest struct {
	Derivation string `json:"derivation"`
	Attempt    int32  `json:"attempt"`
}

// LogResponse is the presigned PUT of the attempt's log, gzipped.
type LogResponse struct {
	Upload bucket.PresignedPut `json:"upload"`
}

// ProbeResponse says who the service takes the caller for.
type ProbeResponse struct {
	Namespace      string `json:"namespace"`
	ServiceAccount string `json:"serviceAccount"`
	Agent          string `json:"agent"`
}

// Reasons of refusals, in the error body.
const (
	ReasonUnauthenticated  = "Unauthenticated"
	ReasonForbidden        = "Forbidden"
	ReasonNotOwner         = "NotOwner"
	ReasonBadRequest       = "BadRequest"
	ReasonNotReproducible  = "NotReproducible"
	ReasonInvalidUpload    = "InvalidUpload"
	ReasonMissingReference = "MissingReference"
	ReasonUnavailable      = "Unavailable"
)

// Sentinels an *Error matches (errors.Is) by its reason.
var (
	ErrUnauthenticated  = errors.New("not authenticated")
	ErrForbidden        = errors.New("forbidden")
	ErrNotOwner         = errors.New("the agent does not hold the attempt")
	ErrBadRequest       = errors.New("bad request")
	ErrNotReproducible  = errors.New("not reproducible")
	ErrInvalidUpload    = errors.New("invalid upload")
	ErrMissingReference = errors.New("missing reference")
	ErrUnavailable      = errors.New("unavailable")
)

var reasons = map[string]struct {
	status int
	err    error
}{
	ReasonUnauthenticated:  {http.StatusUnauthorized, ErrUnauthenticated},
	ReasonForbidden:        {http.StatusForbidden, ErrForbidden},
	ReasonNotOwner:         {http.StatusForbidden, ErrNotOwner},
	ReasonBadRequest:       {http.StatusBadRequest, ErrBadRequest},
	ReasonNotReproducible:  {http.StatusConflict, ErrNotReproducible},
	ReasonInvalidUpload:    {http.StatusUnprocessableEntity, ErrInvalidUpload},
	ReasonMissingReference: {http.StatusUnprocessableEntity, ErrMissingReference},
	ReasonUnavailable:      {http.StatusServiceUnavailable, ErrUnavailable},
}

// Error is a refusal of the service, as its body says it.
type Error struct {
	Status  int    `json:"-"`
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

func (e *Error) Error() string {
	return fmt.Sprintf("publisher: %s (%d %s): %s", e.Reason, e.Status, http.StatusText(e.Status), e.Message)
}

// Is matches the sentinel of e's reason.
func (e *Error) Is(target error) bool {
	r, ok := reasons[e.Reason]
	return ok && r.err == target
}

func refuse(reason, format string, args ...any) *Error {
	st := http.StatusInternalServerError
	if r, ok := reasons[reason]; ok {
		st = r.status
	}
	return &Error{Status: st, Reason: reason, Message: fmt.Sprintf(format, args...)}
}
