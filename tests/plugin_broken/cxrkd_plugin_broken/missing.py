"""Registers KD loss ``never_there`` after a dependency that is not installed."""

import cxrkd_dependency_not_installed  # noqa: F401  (the ImportError under test)

from cxrkd.trainables.kd import Variant, register_kd

register_kd("never_there", label="never", binary=Variant(dict, params=(), space=dict))
