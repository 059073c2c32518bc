from twisted.application.service import ServiceMaker

dkserver = ServiceMaker(
    "dkserver",
    "dkserver.tap",
    "DistributedKnowledge real-time messaging server",
    "dkserver",
)
