package agents

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/guixfarm/guix-farm/internal/agentlease"
)

func metav1LabelSelector() metav1.LabelSelector {
	return metav1.LabelSelector{MatchLabels: map[string]string{agentlease.LabelAgent: "true"}}
}
