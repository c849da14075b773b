"""Training machinery: the task (what is optimised), data order, optimisation, checkpoints,
logging and the loop.

Entry points (``train/arcface.py``) parse arguments and call :class:`Trainer`; nothing
here parses arguments or starts processes.
"""

from facevib.engine.task import FaceRecognitionTask, TaskBatch
from facevib.engine.trainer import Trainer

__all__ = ["FaceRecognitionTask", "TaskBatch", "Trainer"]
