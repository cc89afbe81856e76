"""What the console shows: kfactory's own lines and Keras's progress, not library start-up chatter.

TensorFlow's C++ runtime writes its start-up lines (oneDNN, CPU features, the
CUDA probe's ``cuInit`` error on a machine without a GPU) straight to file
descriptor 2, before and regardless of ``TF_CPP_MIN_LOG_LEVEL``. They are
caught while TensorFlow loads and written to the run's log at DEBUG level;
``KFACTORY_TF_LOG=1`` lets them through to the console as they come.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile

log = logging.getLogger(__name__)

SHOW_TF_LOG = "KFACTORY_TF_LOG"  # =1: TensorFlow's start-up lines go to the console


def import_tensorflow() -> None:
    """Load TensorFlow and probe its devices, keeping the runtime's start-up lines off the console."""
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if os.environ.get(SHOW_TF_LOG) == "1":
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")
        return
    with tempfile.TemporaryFile() as caught:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(caught.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")  # the CUDA probe writes its lines now, not mid-run
        except BaseException:
            os.dup2(saved, 2)
            caught.seek(0)
            sys.stderr.write(caught.read().decode(errors="replace"))  # a failed import keeps its evidence
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        caught.seek(0)
        for line in caught.read().decode(errors="replace").splitlines():
            log.debug("tensorflow: %s", line)
