"""One version: the client ships in the same distribution as the server."""

import dkclient
import dkserver


def test_client_and_server_carry_the_distribution_version():
    from importlib.metadata import version

    assert dkclient.__version__ == dkserver.__version__ == version("dkserver")
