import json
import sys
import time
import traceback

from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2
from awsiot.greengrasscoreipc.model import (
    ConfigurationUpdateEvents,
    JsonMessage,
    PublishMessage,
    SubscriptionResponseMessage,
    UnauthorizedError
)

configuration = {}


def main():
    global configuration
    try:
        ipc_client = GreengrassCoreIPCClientV2()

        # Read this component's configuration (omitting component_name means "mine").
        configuration = ipc_client.get_configuration().value
        topic = configuration['topic']
        print('Configuration: ' + json.dumps(configuration, sort_keys=True))

        # Subscription operations return a tuple with the response and the operation.
        _, operation = ipc_client.subscribe_to_topic(topic=topic,
                                                     on_stream_event=on_stream_event,
                                                     on_stream_error=on_stream_error,
                                                     on_stream_closed=on_stream_closed)
        print('Successfully subscribed to topic: ' + topic)

        # Learn of configuration changes without being restarted.
        ipc_client.subscribe_to_configuration_update(
            on_stream_event=lambda event: on_configuration_update(ipc_client, event))
        print('Successfully subscribed to configuration updates')

        # Keep the main thread alive, or the process will exit.
        try:
            while True:
                message = configuration['message']
                publish_message = PublishMessage(
                    json_message=JsonMessage(message={'message': message}))
                ipc_client.publish_to_topic(topic=topic, publish_message=publish_message)
                print('Successfully published message: ' + message)
                time.sleep(float(configuration.get('intervalSeconds', 5)))
        except InterruptedError:
            print('Subscribe interrupted.')

        # To stop subscribing, close the stream.
        operation.close()
    except UnauthorizedError:
        print('Unauthorized error while subscribing to topic: ' + topic, file=sys.stderr)
        traceback.print_exc()
        exit(1)
    except Exception:
        print('Exception occurred', file=sys.stderr)
        traceback.print_exc()
        exit(1)


def on_stream_event(event: SubscriptionResponseMessage) -> None:
    try:
        message = event.json_message.message
        topic = event.json_message.context.topic
        print('Received new message on topic %s: %s' % (topic, json.dumps(message)))
    except:
        traceback.print_exc()


def on_stream_error(error: Exception) -> bool:
    print('Received a stream error.', file=sys.stderr)
    traceback.print_exc()
    return False  # Return True to close stream, False to keep stream open.


def on_stream_closed() -> None:
    print('Subscribe to topic stream closed.')


def on_configuration_update(ipc_client: GreengrassCoreIPCClientV2,
                            event: ConfigurationUpdateEvents) -> None:
    global configuration
    try:
        key_path = event.configuration_update_event.key_path
        configuration = ipc_client.get_configuration().value
        print('Configuration updated at %s: %s' % ('/'.join(key_path),
                                                   json.dumps(configuration, sort_keys=True)))
    except:
        traceback.print_exc()


if __name__ == '__main__':
    main()
