from twisted.application.service import ServiceMaker

signaling = ServiceMaker(
    "signaling",
    "signaling.tap",
    "A WebRTC signaling server speaking many dialects over one hub.",
    "signaling",
)
