"""Training: optimizer, jitted train/eval steps, and the loop around them."""

from kerasgemma.train.loop import Trainer
from kerasgemma.train.optimizer import make_optimizer
from kerasgemma.train.step import make_eval_step
from kerasgemma.train.step import make_train_step
from kerasgemma.train.step import stack_micro_batches
