// Package deploy holds no code: deploy/ is the Dockerfile, the compose
// file, the Kubernetes manifests, the Prometheus alert rules, the Grafana
// dashboard and the SQL for a least-privilege role. Its tests parse and check every one of them.
package deploy
