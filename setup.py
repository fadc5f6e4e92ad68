"""robust_med: adversarially robust medical-image networks in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name='robust_med',
    version='0.1.0',
    description='Adversarial robustness for medical-imaging networks (JAX/Flax): attacks, '
                'STD/SAT/AMAT training, robustness evaluation.',
    packages=find_packages(include=['robust_med', 'robust_med.*']),
    python_requires='>=3.10',
    install_requires=[
        'jax>=0.7',
        'flax>=0.11',
        'optax>=0.2.5',
        'orbax-checkpoint>=0.11',
        'ml-collections>=1.0',
        'chex>=0.1.89',
        'dm-pix>=0.4',
        'absl-py',
        'numpy',
        'scipy',
        'nibabel>=5',
        'matplotlib',
        'tqdm',
        # Locks JAX's persistent compilation cache (robust_med.compile_cache) for concurrent runs.
        'filelock',
        # Data larger than memory (config.data.pipeline = 'grain'): TFDS array_record builders
        # (robust_med.data.records) read through grain (robust_med.data.pipeline). None of the
        # three needs TensorFlow. Lower bounds: the versions tested.
        'tensorflow-datasets>=4.9.10',
        'grain>=0.2.18',
        'array-record>=0.8.6',
        # TensorBoard event files (robust_med.tensorboard_log): a TensorFlow-free writer whose
        # dependencies (protobuf, numpy, packaging) the install already has.
        'tensorboardX>=2.6',
    ],
    extras_require={
        # DICOM files in image folders (classification head).
        'dicom': ['pydicom>=2.4'],
        # benchmarks/ only: the PyTorch CPU build torchattacks runs on (the bound keeps pip on
        # the CPU wheel of this machine rather than a multi-GB CUDA build). torchattacks itself
        # declares torchvision, which it does not need for PGD/APGD. ART (the
        # adversarial-robustness-toolbox), the other library compared, needs only numpy, scipy,
        # scikit-learn, six and tqdm; MONAI (the 3-D U-Net compared) needs only torch and numpy:
        #   pip install -e '.[bench]' && pip install --no-deps torchattacks
        'bench': ['torch>=2.4,<=2.13.0', 'adversarial-robustness-toolbox>=1.17', 'monai>=1.3'],
        # nbclient, nbformat and ipykernel execute the colab/ notebooks in the tests; pycocotools
        # is the reference the detection mAP is checked against, scikit-learn the reference for
        # AUC and balanced accuracy; pydicom reads the DICOM test fixture; tensorboard's event
        # reader reads the event files back (and `tensorboard --logdir` shows them).
        'test': ['pytest>=8', 'pytest-xdist', 'nbclient', 'nbformat', 'ipykernel', 'pycocotools',
                 'scikit-learn', 'pydicom>=2.4', 'tensorboard>=2.16'],
    },
)
