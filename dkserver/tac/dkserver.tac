# Run with: twistd -ny tac/dkserver.tac   (from a checkout), or with the copy
# installed in the package: twistd -ny "$(dkserver tac-path)".
# Configuration comes from the environment (see README.md); this builds the
# exact service `twistd dkserver` builds.
from twisted.application.service import Application

from dkserver.tap import Options, makeService

options = Options()
options.parseOptions([])
application = Application("dkserver")
makeService(options).setServiceParent(application)
