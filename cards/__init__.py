"""Cards, security domains, applet instances, enrollments, card sessions."""
