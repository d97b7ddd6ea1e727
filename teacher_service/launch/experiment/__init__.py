"""`acl-experiment`: curriculum conditions x seeds against a local teacher service; tables and plots."""
