package main

import (
	"slices"
	"testing"

	"github.com/bowlinemesh/bowline/xds/bootstrap"
)

func TestEnvoyEnvNamesTheWorkload(t *testing.T) {
	got := envoyEnv([]string{"PATH=/bin"}, bootstrap.Options{Service: "orders", Namespace: "shop", Version: "v2"})
	if !slices.Contains(got, "OTEL_RESOURCE_ATTRIBUTES=service.name=orders.shop,service.namespace=shop,service.version=v2") || !slices.Contains(got, "PATH=/bin") {
		t.Fatalf("env %v", got)
	}
	mine := []string{"OTEL_RESOURCE_ATTRIBUTES=service.name=custom"}
	if got := envoyEnv(mine, bootstrap.Options{Service: "orders"}); !slices.Equal(got, mine) {
		t.Fatalf("an operator's attributes were replaced: %v", got)
	}
}
