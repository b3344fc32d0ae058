"""A run folder claimed once for all processes (pretrain.run_folder): two gloo processes either both go on, rank 0
holding the folder, or both stop with rank 0's refusal, and neither writes into a folder rank 0 refused."""
import json
import os

import torch.distributed as dist
import torch.multiprocessing as mp

from bt_transfer.core.rundir import IDENTITY_FILE, LOCK_FILE, claim
from pretrain.distributed import cleanup, free_port, init_distributed
from pretrain.run_folder import claim_for_all


def claim_in_both(folder, info):
    try:
        with claim_for_all(folder, "pretrain", {"lambd": 0.0051}, info):
            (folder / f"written-by-{info.rank}").write_text("")
            holder = json.loads((folder / LOCK_FILE).read_text())["pid"]
            dist.barrier()  # rank 0 keeps the folder until both have looked
            return {"entered": True, "holder": holder == os.getpid()}
    except Exception as error:
        return {"error": type(error).__name__, "message": str(error)}


def worker(rank, port, folders, report):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    info = init_distributed()
    try:
        outcomes = [claim_in_both(folder, info) for folder in folders]
    finally:
        cleanup()
    (report / f"rank{rank}.json").write_text(json.dumps(outcomes))


def test_processes_go_on_in_a_folder_rank_0_holds_and_stop_together_where_it_is_refused(tmp_path):
    free, foreign = tmp_path / "free", tmp_path / "foreign"
    with claim(foreign, "pretrain", {"lambd": 0.01}):
        pass
    mp.spawn(worker, args=(free_port(), [free, foreign], tmp_path), nprocs=2, join=True)
    (free_0, foreign_0), (free_1, foreign_1) = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))

    assert free_0 == {"entered": True, "holder": True} and free_1 == {"entered": True, "holder": False}
    assert json.loads((free / IDENTITY_FILE).read_text())["identity"] == {"lambd": 0.0051}

    assert foreign_0 == foreign_1 and foreign_0["error"] == "RunFolderError"
    assert "holds another pretrain run" in foreign_0["message"] and "(lambd 0.01 -> 0.0051)" in foreign_0["message"]
    assert not list(foreign.glob("written-by-*"))
