//go:build tools

// Package crds only names a package of each module, so that `go mod tidy` keeps them in
// go.mod and go.sum pins them. Nothing here is compiled (the tools build tag is never set).
package crds

import (
	_ "github.com/cert-manager/cert-manager/pkg/apis/certmanager"
	_ "github.com/prometheus-operator/prometheus-operator/pkg/alertmanager/validation"
)
