"""Training: optimizer, jitted train/eval steps, and the loop around them."""

from kerasgemma.training.loop import Trainer
from kerasgemma.training.optimizer import make_optimizer
from kerasgemma.training.step import make_eval_step
from kerasgemma.training.step import make_train_step
from kerasgemma.training.step import stack_micro_batches
