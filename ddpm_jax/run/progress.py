"""What a run shows while it works: a live bar on a terminal, else one line per logging period, and a closing line.

tqdm draws the bars (redraw throttling, terminal width). Neither its rate nor CLU's ReportProgress's is shown:
both divide by wall time, so compiling and every evaluation, grid and save count as training (a first period
at 172 steps/s, "0.0 steps/s, ETA 3h7m" after an evaluation), and tqdm's counts dispatched steps, which JAX
queues far ahead of the device. Here the clock starts after the first step, which compiles, stops while the
loop does other work (`paused`), and is read where the loop waits for the device anyway (`report`).

Output goes to stdout, and is live only where stdout is a terminal: a log file (CI, SLURM) gets plain lines.
"""
import collections
import contextlib
import sys
import time

import jax
import tqdm


def interactive() -> bool:
  """Returns whether stdout is a terminal (live bars) rather than a file or a pipe (plain lines)."""
  return jax.process_index() == 0 and sys.stdout.isatty()


def duration(seconds: float) -> str:
  """Returns seconds as '45s', '3m05s' or '2h07m'."""
  seconds = int(round(max(seconds, 0)))
  if seconds < 60:
    return f'{seconds}s'
  if seconds < 3600:
    return f'{seconds // 60}m{seconds % 60:02d}s'
  return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m'


def say(text: str) -> None:
  """Prints a line on process 0, above any live bar."""
  if jax.process_index() == 0:
    tqdm.tqdm.write(text, file=sys.stdout)
    sys.stdout.flush()


class TrainProgress:
  """Training's progress: steps, steps/s of training alone, ETA and the latest loss.

  A live bar on a terminal; elsewhere one line per logging period. The rate is measured between logging
  periods (`report`), where the loop waits for the device anyway, so it is the device's, not the dispatch's.
  `step` is called after every step, `paused` around work that is not training, `close` once at the end.
  """

  def __init__(self, first_step: int, num_steps: int, live: bool | None = None):
    self.first_step, self.num_steps = first_step, num_steps
    self.live = interactive() if live is None else live
    self.started = time.monotonic()
    self.window = None  # (step, time, paused seconds) where the current rate window began
    self.paused_seconds, self.rate, self.loss = 0.0, None, None
    self.in_flight = collections.deque()  # (step, metrics) dispatched, not yet seen finished (the bar's)
    self.bar = None
    processes = jax.process_count()
    say(f'Training from step {first_step} to {num_steps} on {jax.device_count()} device'
        f'{"s" if jax.device_count() > 1 else ""} ({processes} process{"es" if processes > 1 else ""}; '
        'the first step compiles)')
    if self.live:
      self.bar = tqdm.tqdm(total=num_steps, initial=first_step, unit='step', desc='compiling', file=sys.stdout,
                           dynamic_ncols=True, bar_format='{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} '
                           '[{elapsed}{postfix}]')

  def step(self, step: int, metrics=None) -> None:
    """Counts `step` as dispatched; the first one (compiling) starts the clock instead."""
    if self.window is None:
      self.window = (step, time.monotonic(), self.paused_seconds)
    if self.bar is not None:
      self.in_flight.append((step, metrics))
      self._advance_bar()

  def _advance_bar(self, wait: bool = False) -> None:
    """Moves the bar to the newest finished step; keeps at most 2 steps in flight, so it moves as the device does."""
    while self.in_flight and (wait or len(self.in_flight) > 2 or _finished(self.in_flight[0][1])):
      step, metrics = self.in_flight.popleft()
      jax.block_until_ready(metrics)
      self.bar.update(step - self.bar.n)
      if self.bar.desc == 'compiling':
        self.bar.set_description('train', refresh=False)
    shown = [f'{self.rate:.2f} steps/s', f'ETA {duration((self.num_steps - self.bar.n) / self.rate)}'] \
        if self.rate else []
    shown += [f'loss {self.loss:.4g}'] if self.loss is not None else []
    self.bar.set_postfix_str(', '.join(shown), refresh=False)

  @contextlib.contextmanager
  def paused(self, state=None, what: str = 'train'):
    """Runs the block with the clock stopped (it waits for `state` first: queued steps are training).

    The bar says `what` the loop does meanwhile.
    """
    if state is not None:
      jax.block_until_ready(state)
    if self.bar is not None:
      self._advance_bar(wait=True)
      self.bar.set_description(what)
    start = time.monotonic()
    try:
      yield
    finally:
      self.paused_seconds += time.monotonic() - start
      if self.bar is not None:
        self.bar.set_description('train')

  def report(self, step: int, scalars: dict) -> float | None:
    """Shows the period's loss, rate and ETA; returns steps/s since the last report (None before any step timed)."""
    self.loss = scalars.get('loss')
    rate = None
    if self.window is not None and step > self.window[0]:
      window_step, window_time, window_paused = self.window
      seconds = time.monotonic() - window_time - (self.paused_seconds - window_paused)
      rate = self.rate = (step - window_step) / max(seconds, 1e-9)
      self.window = (step, time.monotonic(), self.paused_seconds)
    if self.bar is not None:
      self._advance_bar(wait=True)
      self.bar.refresh()
    else:
      speed = f'  {rate:.2f} steps/s  ETA {duration((self.num_steps - step) / rate)}' if rate else ''
      loss = f'  loss {self.loss:.4g}' if self.loss is not None else ''
      say(f'step {step}/{self.num_steps}{loss}{speed}')
    return rate

  def close(self, step: int, checkpoint: str | None, evaluation: str | None = None) -> str:
    """Prints and returns the closing line: steps done, wall time, newest checkpoint, last evaluation."""
    if self.bar is not None:
      self.bar.close()
    parts = [f'Trained to step {step}/{self.num_steps} ({step - self.first_step} steps in '
             f'{duration(time.monotonic() - self.started)})',
             f'newest checkpoint {checkpoint}' if checkpoint else 'no checkpoint']
    if evaluation:
      parts.append(f'last evaluation {evaluation}')
    line = '; '.join(parts)
    say(line)
    return line


def _finished(metrics) -> bool:
  """Returns whether the step that returned `metrics` has finished on the device (without waiting for it)."""
  return all(leaf.is_ready() for leaf in jax.tree_util.tree_leaves(metrics) if hasattr(leaf, 'is_ready'))


def timed_batches(batches, total: int, what: str, estimate: bool = True):
  """Yields the batches; on a terminal with a bar, and with one line estimating the whole after the first.

  The first batch is timed from the start until the consumer is done with it, so the estimate covers what
  the consumer does with each batch too (an evaluation's Inception features); it includes compiling.
  """
  bar = tqdm.tqdm(total=total, unit='batch', desc=what, file=sys.stdout, leave=False, dynamic_ncols=True,
                  disable=not interactive())
  start = time.monotonic()
  try:
    for index, batch in enumerate(batches):
      yield batch
      if index == 0 and estimate and total > 1:
        first = time.monotonic() - start
        say(f'{what}: {total} batches, about {duration(first * total)} (the first took {first:.1f} s, '
            'compiling included)')
      bar.update(1)
  finally:
    bar.close()
