"""dkserver: the DistributedKnowledge real-time messaging server.

``__version__`` is the one version of the distribution: setup.cfg reads it
(``version = attr: dkserver.__version__``) and ``twistd dkserver --version``,
``dkserver --version`` and the ``dkserver_build_info`` metric report it.
"""

__version__ = "0.2.0.dev0"
