"""Extractive question answering: start and end logits over the tokens; labels are the answer's token positions."""
from .base import Task

TASK = Task(name="question-answering", suffix="ForQuestionAnswering", auto_class="AutoModelForQuestionAnswering",
            outputs=("start_logits", "end_logits"), labels=("start_positions", "end_positions"), token_axis=True,
            position=2)
