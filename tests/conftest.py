import os

from hypothesis import HealthCheck, settings

# JIT compilation would trip hypothesis deadlines; CI runs more examples.
settings.register_profile(
    "gcomp",
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "ci",
    parent=settings.get_profile("gcomp"),
    max_examples=100,
)
settings.load_profile(os.environ.get("GCOMP_HYPOTHESIS_PROFILE", "gcomp"))
