"""What a run prints while it works, off a terminal (CI, SLURM, pytest): one line per logging period with a rate
that leaves out compiling and paused work, an estimate after an evaluation's first batch, and a closing line."""
import pytest

from ddpm_jax.run import progress


class FakeClock:
  """time.monotonic's stand-in: seconds pass only when a test says so."""

  def __init__(self):
    self.now = 1000.0

  def monotonic(self) -> float:
    return self.now

  def advance(self, seconds: float) -> None:
    self.now += seconds


@pytest.fixture
def clock(monkeypatch):
  fake = FakeClock()
  monkeypatch.setattr(progress, 'time', fake)
  return fake


def test_a_period_line_counts_training_alone_not_compiling_or_evaluating(clock, capsys):
  shown = progress.TrainProgress(first_step=0, num_steps=100, live=False)
  clock.advance(30.0)  # the first step compiles
  shown.step(1)
  for step in range(2, 12):
    clock.advance(0.1)
    shown.step(step)
    if step == 6:
      with shown.paused():
        clock.advance(100.0)  # an evaluation
  rate = shown.report(11, {'loss': 0.5})
  assert rate == pytest.approx(10.0)  # 10 steps in 1 s of training
  lines = capsys.readouterr().out.splitlines()
  assert lines == ['Training from step 0 to 100 on 1 device (1 process; the first step compiles)',
                   'step 11/100  loss 0.5  10.00 steps/s  ETA 9s']


def test_the_closing_line_names_the_steps_the_time_the_checkpoint_and_the_last_evaluation(clock, capsys):
  shown = progress.TrainProgress(first_step=40, num_steps=100, live=False)
  clock.advance(125.0)
  line = shown.close(100, 'runs/q/checkpoints/100', 'step 100: fid 12.3')
  assert line == ('Trained to step 100/100 (60 steps in 2m05s); newest checkpoint runs/q/checkpoints/100; '
                  'last evaluation step 100: fid 12.3')
  assert capsys.readouterr().out.splitlines()[-1] == line


def test_an_estimate_follows_the_first_batch_and_every_batch_passes_through(clock, capsys):
  def batches():
    for index in range(10):
      clock.advance(2.0 if index == 0 else 1.0)
      yield index

  seen = []
  for batch in progress.timed_batches(batches(), 10, 'Evaluating 640 samples'):
    seen.append(batch)
    if batch == 0:
      assert capsys.readouterr().out == ''  # nothing before the first batch is timed
  assert seen == list(range(10))
  assert capsys.readouterr().out == ('Evaluating 640 samples: 10 batches, about 20s (the first took 2.0 s, '
                                     'compiling included)\n')
