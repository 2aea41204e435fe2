"""Load files (CAP), applet releases, rollouts, update jobs, the relay API."""
