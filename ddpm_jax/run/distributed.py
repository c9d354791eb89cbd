"""JAX's multi-process runtime: one process per host (or per GPU), all running the same command.

`initialize` joins the processes with `jax.distributed.initialize`, after which
`jax.devices()` lists the devices of every process, the 'data' mesh spans them
all and Orbax saves collectively. It starts the runtime when

- the flags say so: --coordinator_address=HOST:PORT (process 0's host and a free
  port), --num_processes=N and --process_id=I, all three together; or
- `srun` started several tasks: SLURM_NTASKS > 1 and the variables JAX's own
  Slurm detection reads (SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_PROCID,
  SLURM_LOCALID). JAX then takes the coordinator from the first node of
  SLURM_STEP_NODELIST (the port derived from the job id, or JAX_COORDINATOR_PORT),
  the process count and id from SLURM_NTASKS and SLURM_PROCID, and on GPUs gives
  each task one GPU (the SLURM_LOCALID-th). A batch script's own shell (no srun)
  has no SLURM_STEP_NODELIST and stays one process.

Otherwise the run is one process on its local devices, and nothing is started.
It must run before anything creates JAX's backend (jax.devices(), any array).
"""
import os

import jax

_FLAGS_HINT = 'pass all three of --coordinator_address, --num_processes and --process_id, or none'


def check_flags(coordinator_address: str | None, num_processes: int | None, process_id: int | None) -> None:
  """Returns None; raises a one-line ValueError for a bad combination of the three flags."""
  given = {'coordinator_address': coordinator_address, 'num_processes': num_processes, 'process_id': process_id}
  missing = [f'--{name}' for name, value in given.items() if value is None]
  if missing and len(missing) < len(given):
    present = ', '.join(f'--{name}={value}' for name, value in given.items() if value is not None)
    raise ValueError(f'{present} needs {" and ".join(missing)}; {_FLAGS_HINT}.')
  if missing:
    return
  host, _, port = coordinator_address.rpartition(':')
  if not host or not port.isdigit():
    raise ValueError(f'--coordinator_address={coordinator_address!r} must be HOST:PORT, e.g. 10.0.0.1:1234 '
                     '(process 0\'s address and a free port).')
  if num_processes < 1:
    raise ValueError(f'--num_processes={num_processes} must be at least 1.')
  if not 0 <= process_id < num_processes:
    raise ValueError(f'--process_id={process_id} must be in 0..{num_processes - 1} (--num_processes={num_processes}).')


# What jax._src.clusters.slurm_cluster.SlurmCluster.is_env_present requires (JAX 0.10).
_SLURM_VARIABLES = ('SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS', 'SLURM_PROCID', 'SLURM_LOCALID')


def slurm_has_many_tasks(environ=os.environ) -> bool:
  """Returns whether this is one of several tasks of an srun job step that JAX's Slurm detection can join."""
  tasks = environ.get('SLURM_NTASKS', '')
  return all(name in environ for name in _SLURM_VARIABLES) and tasks.isdigit() and int(tasks) > 1


def use_gloo_on_cpu() -> None:
  """Selects gloo for cross-process collectives on CPU, unless JAX_CPU_COLLECTIVES_IMPLEMENTATION chose one.

  A CPU computation that spans processes needs one. JAX 0.10 defaults to gloo
  already (jax/_src/config.py); older releases defaulted to none. The setting
  only affects CPU devices and must be made before the backend starts.
  """
  if not os.environ.get('JAX_CPU_COLLECTIVES_IMPLEMENTATION'):
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Returns whether it joined (or had joined) a multi-process run; starts JAX's runtime when asked to.

  Raises ValueError for a bad combination of the flags, before anything starts.
  """
  check_flags(coordinator_address, num_processes, process_id)
  if jax.distributed.is_initialized():
    return True
  if coordinator_address is None and not slurm_has_many_tasks():
    return False
  use_gloo_on_cpu()
  # With no arguments JAX detects the cluster (SLURM here) and fills them in.
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id)
  return True
