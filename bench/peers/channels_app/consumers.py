from channels.generic.websocket import AsyncWebsocketConsumer

GROUP = "fan"


class FanConsumer(AsyncWebsocketConsumer):
    """Joins group "fan" on connect; every group message's text goes to the socket."""

    async def connect(self) -> None:
        await self.channel_layer.group_add(GROUP, self.channel_name)
        await self.accept()
        await self.send(text_data='{"ready":1}')

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(GROUP, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None) -> None:
        pass

    async def fan_message(self, event: dict) -> None:
        await self.send(text_data=event["text"])
