"""Assembly: settings, the Faust app, HTTP views, Prometheus metrics, the CLI."""
