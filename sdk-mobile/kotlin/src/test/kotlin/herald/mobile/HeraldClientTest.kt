package herald.mobile

import java.util.concurrent.CopyOnWriteArrayList
import kotlinx.coroutines.runBlocking
import org.json.JSONObject
import org.junit.jupiter.api.AfterAll
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.BeforeAll
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.TestInstance
import org.junit.jupiter.api.Timeout
import org.junit.jupiter.api.assertThrows

/**
 * The Kotlin bindings against a real Herald server: the native library comes from
 * `-Djna.library.path` (sdk-mobile/generated/lib), the server from `-Dherald.bin`. Every test uses
 * its own project, so they share one server.
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
@Timeout(60)
class HeraldClientTest {
    private lateinit var server: TestServer

    @BeforeAll
    fun startServer() {
        server = TestServer.start()
    }

    @AfterAll
    fun stopServer() {
        server.close()
    }

    /** A token provider that signs with [key] through the publisher API, like an app's backend. */
    private inner class SigningProvider(@Volatile var key: ApiKey) : TokenProvider {
        val asked: MutableList<String> = CopyOnWriteArrayList()
        val threads: MutableList<String> = CopyOnWriteArrayList()

        override fun token(channelName: String): String {
            asked.add(channelName)
            threads.add(osThreadName())
            return server.sign(key, channelName)
        }
    }

    private fun connected(
        project: Project,
        listener: RecordingListener,
        tokenProvider: TokenProvider? = null,
    ): HeraldClient {
        val client = HeraldClient(server.url, project.id, listener, tokenProvider)
        runBlocking { client.connect() }
        listener.awaitState("Connected") { it == ConnectionState.Connected }
        return client
    }

    @Test
    fun `connects, listens and receives a REST-published event`() {
        val project = server.newProject()
        val listener = RecordingListener()
        connected(project, listener).use { client ->
            runBlocking { client.listen("orders") }
            val ok = listener.awaitSystem(SystemMessageCode.SUCCESS)
            assertEquals("orders", JSONObject(ok.dataJson).getString("channelName"))

            val payload = """{"orderId":42,"status":"shipped","items":[1,2],"gift":null}"""
            val messageId = server.publish(project.key, "orders", payload)

            val event = listener.awaitEvent("orders")
            assertTrue(JSONObject(payload).similar(JSONObject(event.payloadJson)), event.payloadJson)
            assertEquals(messageId, event.messageId)
            // Every callback comes on the client's one listener thread.
            assertEquals(setOf("herald-listener"), listener.threads)

            // Listening again to the same channel succeeds.
            runBlocking { client.listen("orders") }
        }
    }

    @Test
    fun `remove stops the events of that channel only`() {
        val project = server.newProject()
        val listener = RecordingListener()
        connected(project, listener).use { client ->
            runBlocking {
                client.listen("news")
                client.listen("sports")
                client.remove("news")
                client.remove("never-listened") // idempotent
            }
            server.publish(project.key, "news", """{"n":1}""")
            server.publish(project.key, "sports", """{"n":2}""")
            // One socket receives in order: once the sports event is here, a news event would be too.
            listener.awaitEvent("sports")
            val news = listener.history.filterIsInstance<Heard.Event>().filter { it.channel == "news" }
            assertEquals(emptyList<Heard.Event>(), news)
        }
    }

    @Test
    fun `listens to a private channel with a token from the token provider`() {
        val project = server.newProject()
        val listener = RecordingListener()
        val provider = SigningProvider(project.key)
        connected(project, listener, provider).use { client ->
            runBlocking { client.listenPrivate("private-user-42") }
            assertEquals(listOf("private-user-42"), provider.asked)
            // Called on a background thread of the client's runtime, where blocking is fine.
            assertTrue(provider.threads.single().startsWith("herald-mobile"), provider.threads.toString())

            server.publish(project.key, "private-user-42", """{"text":"hello"}""")
            val event = listener.awaitEvent("private-user-42")
            assertEquals("hello", JSONObject(event.payloadJson).getString("text"))

            // listen() on a private name uses the provider too.
            runBlocking { client.listen("private-user-43") }
            assertEquals(listOf("private-user-42", "private-user-43"), provider.asked)
        }
    }

    /**
     * Deleting the API key that signed a private channel's token removes the socket from the
     * channel: the server sends `system_message {code: "RemovedFromChannel", data: {channels}}`
     * (docs/PROTOCOL.md; the key revocation workflow) and stops delivering that channel's events.
     */
    @Test
    fun `RemovedFromChannel after the signing key is deleted`() {
        val project = server.newProject()
        val signer = server.createKey(project.id, "signer")
        val listener = RecordingListener()
        connected(project, listener, SigningProvider(signer)).use { client ->
            runBlocking {
                client.listenPrivate("private-inbox")
                client.listen("control")
            }
            server.deleteKey(project.id, signer.id)

            val removed = listener.awaitSystem(SystemMessageCode.REMOVED_FROM_CHANNEL)
            val channels = JSONObject(removed.dataJson).getJSONArray("channels").toList()
            assertEquals(listOf("private-inbox"), channels)

            // No longer in the channel; still in the public one.
            server.publish(project.key, "private-inbox", """{"secret":true}""")
            server.publish(project.key, "control", """{"after":"removal"}""")
            listener.awaitEvent("control")
            val leaked = listener.history.filterIsInstance<Heard.Event>().filter { it.channel == "private-inbox" }
            assertEquals(emptyList<Heard.Event>(), leaked)
        }
    }

    @Test
    fun `reconnects after a server restart and listens again, with fresh tokens`() {
        TestServer.start().use { own ->
            val project = own.newProject()
            val listener = RecordingListener()
            val asked = CopyOnWriteArrayList<String>()
            val provider = object : TokenProvider {
                override fun token(channelName: String): String {
                    asked.add(channelName)
                    // After the restart, the backend refuses private-gone.
                    if (channelName == "private-gone" && asked.count { it == channelName } > 1) {
                        throw IllegalStateException("user logged out")
                    }
                    return own.sign(project.key, channelName)
                }
            }
            val client = HeraldClient(own.url, project.id, listener, provider)
            client.use {
                runBlocking {
                    client.connect()
                    client.listen("orders")
                    client.listenPrivate("private-kept")
                    client.listenPrivate("private-gone")
                }
                listener.awaitState("Connected") { it == ConnectionState.Connected }

                own.restart()

                val reconnecting = listener.awaitState("Reconnecting") { it is ConnectionState.Reconnecting }
                        as ConnectionState.Reconnecting
                assertTrue(reconnecting.attempt >= 1u, reconnecting.toString())
                assertTrue(reconnecting.delay > java.time.Duration.ZERO, reconnecting.toString())
                val failed = listener.await("relisten failure") { it as? Heard.RelistenFailed }
                assertEquals("private-gone", failed.channel)
                val cause = failed.error as HeraldException.TokenProvider
                assertTrue(cause.reason.contains("user logged out"), cause.reason)
                listener.awaitState("Connected again") { it == ConnectionState.Connected }
                // Each private channel asked for a fresh token.
                assertEquals(2, asked.count { it == "private-kept" }, asked.toString())

                own.publish(project.key, "orders", """{"after":"restart"}""")
                own.publish(project.key, "private-kept", """{"still":"here"}""")
                listener.awaitEvent("orders")
                listener.awaitEvent("private-kept")
            }
        }
    }

    @Test
    fun `a listener that throws keeps getting callbacks`() {
        val project = server.newProject()
        val inner = RecordingListener()
        val throwing = object : HeraldListener by inner {
            override fun onEvent(channelName: String, payloadJson: String, messageId: String?, offset: ULong?, epoch: String?) {
                inner.onEvent(channelName, payloadJson, messageId, offset, epoch)
                throw IllegalStateException("bug in the app's listener")
            }
        }
        val client = HeraldClient(server.url, project.id, throwing)
        client.use {
            runBlocking {
                client.connect()
                client.listen("orders")
            }
            server.publish(project.key, "orders", """{"n":1}""")
            server.publish(project.key, "orders", """{"n":2}""")
            assertEquals("""{"n":1}""", inner.awaitEvent("orders").payloadJson)
            assertEquals("""{"n":2}""", inner.awaitEvent("orders").payloadJson)
        }
    }

    @Test
    fun `the client can be closed from inside a callback`() {
        val project = server.newProject()
        for (how in listOf("close", "shutdown")) {
            val inner = RecordingListener()
            lateinit var client: HeraldClient
            val closing = object : HeraldListener by inner {
                override fun onEvent(channelName: String, payloadJson: String, messageId: String?, offset: ULong?, epoch: String?) {
                    inner.onEvent(channelName, payloadJson, messageId, offset, epoch)
                    // On the listener thread: close() drops the native object here, shutdown()
                    // must not wait for the thread it runs on.
                    if (how == "close") client.close() else runBlocking { client.shutdown() }
                }
            }
            client = HeraldClient(server.url, project.id, closing)
            runBlocking {
                client.connect()
                client.listen("orders")
            }
            server.publish(project.key, "orders", """{"close":"$how"}""")
            inner.awaitEvent("orders")
            inner.awaitState("Closed after $how") { it == ConnectionState.Closed(null) }
            client.close()
        }
    }

    @Test
    fun `invalid channel names raise InvalidRequest with the protocol code, before any request`() {
        val project = server.newProject()
        val listener = RecordingListener()
        // Checked locally: the same codes whether or not the client is connected.
        HeraldClient(server.url, project.id, listener).use { notConnected ->
            val e = assertThrows<HeraldException.InvalidRequest> { runBlocking { notConnected.listen("not valid!") } }
            assertEquals("invalid_channel_name", e.code)
        }
        connected(project, listener).use { client ->
            val cases = listOf(
                "not valid!" to "invalid_channel_name",
                "" to "invalid_channel_name",
                "a:b" to "invalid_channel_name",
                "x".repeat(165) to "invalid_channel_name",
                "privateer" to "ambiguous_channel_name",
                "Private-x" to "ambiguous_channel_name",
            )
            for ((name, code) in cases) {
                val listen = assertThrows<HeraldException.InvalidRequest>(name) { runBlocking { client.listen(name) } }
                assertEquals(code, listen.code, name)
                val remove = assertThrows<HeraldException.InvalidRequest>(name) { runBlocking { client.remove(name) } }
                assertEquals(code, remove.code, name)
            }
            val public = assertThrows<HeraldException.InvalidRequest> { runBlocking { client.listenPrivate("orders") } }
            assertEquals("channel_not_private", public.code)
            // A HeraldException is an Exception with a readable message.
            assertTrue(public.message.contains("channel_not_private"), public.message)
        }
    }

    @Test
    fun `private channel errors keep their codes`() {
        val project = server.newProject()
        val listener = RecordingListener()
        connected(project, listener).use { client ->
            val missing = assertThrows<HeraldException.InvalidRequest> { runBlocking { client.listenPrivate("private-a") } }
            assertEquals("token_missing", missing.code)
        }
        val failing = object : TokenProvider {
            override fun token(channelName: String): String = throw IllegalStateException("backend down")
        }
        connected(project, RecordingListener(), failing).use { client ->
            val e = assertThrows<HeraldException.TokenProvider> { runBlocking { client.listenPrivate("private-b") } }
            assertEquals("private-b", e.channelName)
            assertTrue(e.reason.contains("backend down"), e.reason)
        }
        val refusing = object : TokenProvider {
            override fun token(channelName: String): String =
                throw HeraldException.Refused("token_key_scope", "my backend says no")
        }
        connected(project, RecordingListener(), refusing).use { client ->
            val e = assertThrows<HeraldException.TokenProvider> { runBlocking { client.listenPrivate("private-c") } }
            assertTrue(e.reason.contains("my backend says no"), e.reason)
        }
        val garbage = object : TokenProvider {
            override fun token(channelName: String): String = "not-a-jwt"
        }
        connected(project, RecordingListener(), garbage).use { client ->
            val e = assertThrows<HeraldException.Refused> { runBlocking { client.listenPrivate("private-d") } }
            assertEquals("token_malformed", e.code)
        }
        // A token for another channel.
        val other = object : TokenProvider {
            override fun token(channelName: String): String = server.sign(project.key, "private-other")
        }
        connected(project, RecordingListener(), other).use { client ->
            val e = assertThrows<HeraldException.Refused> { runBlocking { client.listenPrivate("private-e") } }
            assertEquals("token_channel_mismatch", e.code)
        }
    }

    @Test
    fun `connection errors are typed`() {
        val listener = RecordingListener()
        val badId = assertThrows<HeraldException.InvalidRequest> { HeraldClient(server.url, "Not A Project", listener) }
        assertEquals("invalid_project_id", badId.code)

        HeraldClient(server.url, "no-such-project", listener).use { client ->
            val e = assertThrows<HeraldException.Refused> { runBlocking { client.connect() } }
            assertEquals("unknown_project", e.code)
            // Still not connected: requests say so.
            assertThrows<HeraldException.NotConnected> { runBlocking { client.listen("orders") } }
        }
        HeraldClient("ftp://example.invalid", "acme", listener).use { client ->
            assertThrows<HeraldException.Config> { runBlocking { client.connect() } }
        }
        // Nothing listens on port 1.
        HeraldClient("http://127.0.0.1:1", "acme", listener).use { client ->
            assertThrows<HeraldException.Connection> { runBlocking { client.connect() } }
        }
    }

    @Test
    fun `shutdown closes politely and for good, close frees the native object`() {
        val project = server.newProject()
        val listener = RecordingListener()
        val client = HeraldClient(server.url, project.id, listener)
        assertThrows<HeraldException.NotConnected> { runBlocking { client.listen("orders") } }
        runBlocking {
            client.connect()
            client.connect() // connected already: nothing happens
            client.listen("orders")
            client.shutdown()
        }
        // The last callback has been delivered when shutdown() returns.
        assertEquals(Heard.State(ConnectionState.Closed(null)), listener.history.last())
        assertThrows<HeraldException.Closed> { runBlocking { client.listen("orders") } }
        assertThrows<HeraldException.Closed> { runBlocking { client.connect() } }
        runBlocking { client.shutdown() } // twice is harmless
        client.close()
        assertTrue(client.uniffiIsDestroyed)
        assertThrows<IllegalStateException> { runBlocking { client.listen("orders") } }

        // close() alone (AutoCloseable, e.g. `use { }`) also ends a live connection.
        val second = connected(project, RecordingListener())
        runBlocking { second.listen("orders") }
        second.close()
        assertTrue(second.uniffiIsDestroyed)
    }
}
