"""The access-log feedback loop, composed: the ALS receiver (:mod:`junction.als`) feeding
the canary controller (:mod:`junction.canary`), in the control plane or alone
(``junction als serve``), and its command-line surface."""
