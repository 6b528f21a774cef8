package pushsvc

import (
	"errors"
	"os"
	"strings"
)

// Version is this client's release; the module is tagged clients/go/v<Version>.
const Version = "0.1.0"

// The environment NewFromEnv reads: the same names as the pushsvc command and
// the node itself.
const (
	// EnvGRPCAddr is the node's gRPC address, host:port.
	EnvGRPCAddr = "PUSHSVC_GRPC_ADDR"
	// EnvAPIKey is the API key of this client.
	EnvAPIKey = "PUSHSVC_API_KEY"
	// EnvAPIKeys is the node's comma-separated key list; its first key is used
	// when EnvAPIKey is unset, so a node's environment file works as it is.
	EnvAPIKeys = "PUSHSVC_API_KEYS"
	// DefaultAddr is the address used when EnvGRPCAddr is unset.
	DefaultAddr = "127.0.0.1:50051"
	// EnvTLSCA names a PEM file of CA certificates: dial with TLS and verify the
	// node's certificate against them (the node reads the same name).
	EnvTLSCA = "PUSHSVC_TLS_CA"
	// EnvTLS set to 1/true/yes/on: dial with TLS, verified against the
	// system's trusted roots (ignored when EnvTLSCA is set).
	EnvTLS = "PUSHSVC_TLS"
)

// ErrNoAPIKey is what NewFromEnv returns when neither PUSHSVC_API_KEY nor
// PUSHSVC_API_KEYS holds a key. Every pushsvc client says the same words.
var ErrNoAPIKey = errors.New("pushsvc: no API key: set PUSHSVC_API_KEY, or PUSHSVC_API_KEYS as on the node (its first key is used)")

// AddrFromEnv returns $PUSHSVC_GRPC_ADDR, or DefaultAddr when it is unset.
func AddrFromEnv() string {
	if a := strings.TrimSpace(os.Getenv(EnvGRPCAddr)); a != "" {
		return a
	}
	return DefaultAddr
}

// APIKeyFromEnv returns $PUSHSVC_API_KEY, else the first key of
// $PUSHSVC_API_KEYS, else ErrNoAPIKey.
func APIKeyFromEnv() (string, error) {
	if k := strings.TrimSpace(os.Getenv(EnvAPIKey)); k != "" {
		return k, nil
	}
	for _, k := range strings.Split(os.Getenv(EnvAPIKeys), ",") {
		if k = strings.TrimSpace(k); k != "" {
			return k, nil
		}
	}
	return "", ErrNoAPIKey
}

// TLSFromEnv is WithTLS($PUSHSVC_TLS_CA) when that is set, WithTLS("") when
// $PUSHSVC_TLS is 1, true, yes or on, else nil (plaintext).
func TLSFromEnv() Option {
	if ca := strings.TrimSpace(os.Getenv(EnvTLSCA)); ca != "" {
		return WithTLS(ca)
	}
	switch strings.ToLower(strings.TrimSpace(os.Getenv(EnvTLS))) {
	case "1", "true", "yes", "on":
		return WithTLS("")
	}
	return nil
}

// NewFromEnv creates a client for AddrFromEnv() with APIKeyFromEnv() and, when
// the environment asks for it, TLSFromEnv(); opts come after those, so
// WithAPIKey or WithTLS in opts win. It fails with ErrNoAPIKey when the
// environment holds no key and opts give none either.
func NewFromEnv(opts ...Option) (*Client, error) {
	key, err := APIKeyFromEnv()
	probe := config{}
	for _, opt := range opts {
		_ = opt(&probe) // only to see whether opts carry a key; New checks them
	}
	if err != nil && probe.apiKey == "" {
		return nil, err
	}
	base := []Option{WithAPIKey(key)}
	if tlsOpt := TLSFromEnv(); tlsOpt != nil {
		base = append(base, tlsOpt)
	}
	return New(AddrFromEnv(), append(base, opts...)...)
}
