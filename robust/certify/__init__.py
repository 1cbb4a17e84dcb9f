"""Certified robustness: randomized smoothing (L2, :mod:`.smoothing`), interval bound propagation
(:mod:`.ibp`) and CROWN (:mod:`.crown`) for L-inf, per-example verification with an attack
(:mod:`.verify`), and certification reports (:mod:`.report`, the ``robust certify`` command); every
certifier first refuses a model with non-finite weights (:mod:`.checks`)."""
