package publishing

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/guixfarm/guix-farm/internal/bucket"
)

// DefaultTokenFile is where a pod's projected ServiceAccount token is.
const DefaultTokenFile = "/var/run/secrets/kubernetes.io/serviceaccount/token"

// Client talks to the publisher service for one agent.
type Client struct {
	// URL is the service's base URL, e.g. http://guix-farm-publisher.guix-farm:8082.
	URL string
	// TokenFile holds the agent's ServiceAccount token. It is read at every request: the kubelet
	// replaces a projected token before it expires.
	TokenFile string
	// HTTP is the client (default: one without a timeout; requests are bounded by their context).
	HTTP *http.Client
	// RetryFor bounds how long a request that failed in transit, or found the service
	// unavailable (503: the apiserver or the bucket unreachable from the controller), is tried
	// again, with a backoff up to 5 s (default 10 minutes): an outage holds the attempt's
	// publication, it does not fail it. Negative: one try.
	RetryFor time.Duration
}

func (c *Client) http() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return http.DefaultClient
}

// Token reads the agent's token.
func (c *Client) Token() (string, error) {
	f := c.TokenFile
	if f == "" {
		f = DefaultTokenFile
	}
	b, err := os.ReadFile(f)
	if err != nil {
		return "", fmt.Errorf("publisher: reading the agent's token: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// do POSTs in as JSON to path and decodes the answer into out; a refusal is an *Error. Requests
// that did not reach the service, or found it unavailable, are tried again (every request of the
// protocol may be repeated).
func (c *Client) do(ctx context.Context, path string, in, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return err
	}
	retryFor := c.RetryFor
	if retryFor == 0 {
		retryFor = 10 * time.Minute
	}
	deadline := time.Now().Add(retryFor)
	delay := 250 * time.Millisecond
	for {
		err = c.once(ctx, path, body, out)
		var e *Error
		retry := err != nil && ctx.Err() == nil && (!errors.As(err, &e) || e.Status == http.StatusServiceUnavailable || e.Status == http.StatusBadGateway)
		if !retry || time.Now().Add(delay).After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
}

func (c *Client) once(ctx context.Context, path string, body []byte, out any) error {
	tok, err := c.Token()
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(c.URL, "/")+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := c.http().Do(req)
	if err != nil {
		return fmt.Errorf("publisher at %s: %w", c.URL, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return fmt.Errorf("publisher at %s: reading the answer: %w", c.URL, err)
	}
	if resp.StatusCode != http.StatusOK {
		e := &Error{Status: resp.StatusCode}
		if json.Unmarshal(data, e) != nil || e.Reason == "" {
			e.Reason, e.Message = ReasonUnavailable, strings.TrimSpace(string(data))
			if resp.StatusCode < 500 {
				e.Reason = ReasonBadRequest
			}
		}
		return e
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("publisher at %s: decoding the answer to %s: %w", c.URL, path, err)
	}
	return nil
}

// Uploads asks for the uploads of req's items.
func (c *Client) Uploads(ctx context.Context, req UploadsRequest) (*UploadsResponse, error) {
	var out UploadsResponse
	if err := c.do(ctx, PathUploads, req, &out); err != nil {
		return nil, err
	}
	if len(out.Items) != len(req.Items) {
		return nil, fmt.Errorf("publisher: %d answers for %d items", len(out.Items), len(req.Items))
	}
	return &out, nil
}

// Commit asks the service to verify the uploads and write the narinfos.
func (c *Client) Commit(ctx context.Context, req CommitRequest) (*CommitResponse, error) {
	var out CommitResponse
	if err := c.do(ctx, PathCommit, req, &out); err != nil {
		return nil, err
	}
	if len(out.Items) != len(req.Items) {
		return nil, fmt.Errorf("publisher: %d answers for %d items", len(out.Items), len(req.Items))
	}
	return &out, nil
}

// LogUpload asks for the presigned upload of an attempt's log.
func (c *Client) LogUpload(ctx context.Context, req LogRequest) (*LogResponse, error) {
	var out LogResponse
	if err := c.do(ctx, PathLogs, req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// CommitLog makes the uploaded log of an attempt the derivation's log.
func (c *Client) CommitLog(ctx context.Context, req LogRequest) error {
	return c.do(ctx, PathLogCommit, req, nil)
}

// Probe says who the service takes this agent for (one try: a health check must not wait).
func (c *Client) Probe(ctx context.Context) (*ProbeResponse, error) {
	var out ProbeResponse
	if err := c.once(ctx, PathProbe, []byte("{}"), &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// ErrUploadExists: a presigned nar PUT answered 412: the object is there already (uploaded by
// another attempt, or by this one before a lost answer). The commit verifies what is there.
var ErrUploadExists = errors.New("the object was uploaded already")

// ErrUploadExpired: a presigned PUT answered 403 after its URL expired; ask for another.
var ErrUploadExpired = errors.New("the presigned URL expired")

// Put uploads size bytes of body to a presigned URL, with its signed headers and nothing that
// carries a credential. body is read once.
func (c *Client) Put(ctx context.Context, u bucket.PresignedPut, body io.Reader, size int64) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, u.URL, body)
	if err != nil {
		return err
	}
	req.ContentLength = size
	if size == 0 {
		req.Body = http.NoBody
	}
	for k, v := range u.Headers {
		req.Header.Set(k, v)
	}
	resp, err := c.http().Do(req)
	if err != nil {
		return fmt.Errorf("uploading to the bucket: %w", err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	switch {
	case resp.StatusCode/100 == 2:
		return nil
	case resp.StatusCode == http.StatusPreconditionFailed:
		return ErrUploadExists
	case resp.StatusCode == http.StatusForbidden && (time.Now().After(u.Expires) || bytes.Contains(msg, []byte("expired"))):
		return fmt.Errorf("%w (it expired at %s)", ErrUploadExpired, u.Expires.Format(time.RFC3339))
	}
	return &PutError{Status: resp.StatusCode, Body: strings.TrimSpace(string(msg))}
}

// PutError is the bucket's refusal of a presigned PUT.
type PutError struct {
	Status int
	Body   string
}

func (e *PutError) Error() string {
	return fmt.Sprintf("uploading to the bucket: %d %s: %s", e.Status, http.StatusText(e.Status), e.Body)
}
