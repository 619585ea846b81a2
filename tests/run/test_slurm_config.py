"""conf/hydra/launcher/submitit_slurm.yaml without the plugin installed: every key is one the plugin knows.

Runs without the optional extra; with it, tests/run/test_submitit_launcher.py also composes the launcher.
"""


from omegaconf import OmegaConf

from atp.config import CONF_DIR

LAUNCHER = CONF_DIR / "hydra" / "launcher" / "submitit_slurm.yaml"

# Fields of hydra_plugins.hydra_submitit_launcher.config.SlurmQueueConf (and BaseQueueConf), plugin 1.2.
SLURM_QUEUE_FIELDS = {
    "submitit_folder", "timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes",
    "name", "stderr_to_stdout", "partition", "qos", "comment", "constraint", "exclude", "gres", "cpus_per_gpu",
    "gpus_per_task", "mem_per_gpu", "mem_per_cpu", "account", "signal_delay_s", "max_num_timeout",
    "additional_parameters", "array_parallelism", "setup",
}


def test_submitit_slurm_keys_exist_in_the_plugin_and_interpolate():
    launcher = OmegaConf.load(LAUNCHER)
    assert launcher._target_.endswith("SlurmLauncher")  # the plugin's launcher, every field set here
    keys = set(launcher) - {"_target_"}
    assert keys <= SLURM_QUEUE_FIELDS, keys - SLURM_QUEUE_FIELDS
    assert {"timeout_min", "gpus_per_node", "tasks_per_node", "partition", "signal_delay_s",
            "max_num_timeout"} <= keys
    # one process per GPU: tasks_per_node follows hydra.launcher.gpus_per_node=<n>
    four = OmegaConf.merge(launcher, {"gpus_per_node": 4})
    assert four.tasks_per_node == 4 and launcher.tasks_per_node == launcher.gpus_per_node
    assert 0 < launcher.signal_delay_s < 60 * launcher.timeout_min and launcher.max_num_timeout > 0
