"""Per-sample state for methods: :mod:`kdzoo.toolkit.memory`, under the name 0.1.0 documented
(``kdzoo.memory.SampleMemory``), so a plugin written then keeps working. New code imports from
:mod:`kdzoo.toolkit`."""

import sys

from kdzoo.toolkit import memory

sys.modules[__name__] = memory  # one module under two names, not a copy: patching either patches both
