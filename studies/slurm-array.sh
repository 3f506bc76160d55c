#!/bin/bash
# One study on many nodes: a SLURM array, one task per node, each running trials on its node's GPUs.
# Submit from the folder of study.yaml (study.storage: a PostgreSQL URL every node reaches), with hpo's
# environment active: sbatch passes it on. `sbatch --array=0-7 slurm-array.sh` for 8 nodes instead of 4.
#SBATCH --array=0-3 --nodes=1
#SBATCH --gres=gpu:8        # the node's GPUs; leave this line out on CPU-only nodes
hpo run study.yaml          # every task runs this: the first creates the study, the others join it
