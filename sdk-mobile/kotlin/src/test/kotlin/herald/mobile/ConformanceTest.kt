package herald.mobile

import java.io.BufferedReader
import java.net.URI
import java.net.http.HttpClient
import java.net.http.HttpRequest
import java.net.http.HttpResponse
import java.nio.file.Files
import java.nio.file.Path
import java.time.Duration
import java.util.concurrent.CompletableFuture
import java.util.concurrent.CountDownLatch
import java.util.concurrent.TimeUnit
import java.util.concurrent.locks.ReentrantLock
import kotlin.concurrent.withLock
import kotlin.concurrent.thread
import kotlinx.coroutines.runBlocking
import org.json.JSONArray
import org.json.JSONObject
import org.json.JSONTokener
import org.junit.jupiter.api.AfterAll
import org.junit.jupiter.api.BeforeAll
import org.junit.jupiter.api.DynamicTest
import org.junit.jupiter.api.TestFactory
import org.junit.jupiter.api.TestInstance

/**
 * The conformance suite's Kotlin runner: an interpreter of tests/conformance/scenarios.json
 * driving the Kotlin bindings ([HeraldClient], public API only) against the real binary, which
 * tests/conformance/conductor.mjs starts and drives (server steps are written once there). One
 * dynamic test per scenario, by name; the results go to target/conformance/kotlin.json (at the
 * repository root) for tests/conformance/check.mjs. Step kinds: tests/conformance/README.md.
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
class ConformanceTest {
    private val root: Path = Path.of(System.getProperty("herald.root") ?: error("system property herald.root is not set"))
        .toAbsolutePath().normalize()
    private val report = JSONArray()
    private lateinit var conductor: Conductor

    /** conductor.mjs, spawned with node; it stops Herald and exits when its stdin closes. */
    private class Conductor(root: Path) : AutoCloseable {
        private val process: Process
        val control: String
        private val http = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(5)).build()

        init {
            val bin = System.getProperty("herald.bin") ?: error("system property herald.bin is not set")
            val builder = ProcessBuilder("node", root.resolve("tests/conformance/conductor.mjs").toString())
                .redirectError(ProcessBuilder.Redirect.INHERIT)
            builder.environment()["HERALD_BIN"] = Path.of(bin).toAbsolutePath().normalize().toString()
            process = builder.start()
            val stdout: BufferedReader = process.inputStream.bufferedReader()
            val first = try {
                CompletableFuture.supplyAsync { stdout.readLine() }.get(30, TimeUnit.SECONDS)
            } catch (e: Exception) {
                process.destroyForcibly()
                throw IllegalStateException("the conductor did not start: $e", e)
            } ?: run {
                process.destroyForcibly()
                error("the conductor exited before it was ready")
            }
            control = JSONObject(first).getString("control")
            thread(isDaemon = true, name = "conductor-stdout") { stdout.forEachLine { } }
        }

        fun post(path: String, body: JSONObject = JSONObject()): JSONObject {
            val request = HttpRequest.newBuilder(URI.create(control + path))
                .timeout(Duration.ofSeconds(60))
                .header("Content-Type", "application/json")
                .POST(HttpRequest.BodyPublishers.ofString(body.toString()))
                .build()
            val response = http.send(request, HttpResponse.BodyHandlers.ofString())
            val answer = JSONObject(response.body())
            check(response.statusCode() == 200) { answer.optString("error", "conductor $path: HTTP ${response.statusCode()}") }
            return answer
        }

        override fun close() {
            runCatching { post("/stop") }
            process.outputStream.close()
            if (!process.waitFor(15, TimeUnit.SECONDS)) process.destroyForcibly().waitFor(5, TimeUnit.SECONDS)
        }
    }

    /** The token provider: the conductor's token endpoint plays the app's backend. */
    private inner class ConductorTokens : TokenProvider {
        override fun token(channelName: String): String =
            conductor.post("/token", JSONObject().put("channel", channelName)).getString("token")
    }

    /** One thing the listener heard. */
    private data class Entry(
        val kind: String,
        val channel: String? = null,
        val id: String? = null,
        val payloadJson: String? = null,
        val state: String? = null,
        val code: String? = null,
        val dataJson: String? = null,
        val offset: ULong? = null,
        val recovered: Boolean? = null,
        val reason: String? = null,
        val action: String? = null,
        val user: String? = null,
        val users: List<String>? = null,
    )

    /**
     * Records every callback; while [pause]d, the callbacks block (the listener thread stops
     * taking events, so the client's buffer fills and it stops reading its socket).
     */
    private class Recorder : HeraldListener {
        private val lock = ReentrantLock()
        private val changed = lock.newCondition()
        private val heard = ArrayList<Entry>()

        @Volatile
        private var gate: CountDownLatch? = null

        fun pause() {
            gate = CountDownLatch(1)
        }

        fun resume() {
            gate?.countDown()
            gate = null
        }

        private fun record(entry: Entry) {
            gate?.await(120, TimeUnit.SECONDS)
            lock.withLock {
                heard.add(entry)
                changed.signalAll()
            }
        }

        fun from(cursor: Int): List<Entry> = lock.withLock { heard.drop(cursor) }

        /** Waits for the first entry at or after [cursor] that [matches]; returns its index. */
        fun waitFor(cursor: Int, what: String, matches: (Entry) -> Boolean): Int {
            val deadline = System.nanoTime() + EXPECT_TIMEOUT.toNanos()
            lock.withLock {
                while (true) {
                    for (i in cursor until heard.size) if (matches(heard[i])) return i
                    val left = deadline - System.nanoTime()
                    if (left <= 0) {
                        throw AssertionError("timed out after $EXPECT_TIMEOUT waiting for $what; heard since the last match: ${summary(heard.drop(cursor))}")
                    }
                    changed.awaitNanos(left)
                }
            }
        }

        override fun onEvent(channelName: String, payloadJson: String, messageId: String?, offset: ULong?, epoch: String?) =
            record(Entry("event", channel = channelName, id = messageId, payloadJson = payloadJson, offset = offset))

        override fun onRecovery(channelName: String, recovered: Boolean, reason: RecoveryReason?) =
            // EPOCH_CHANGED → "epoch_changed": the names of the other platforms.
            record(Entry("recovery", channel = channelName, recovered = recovered, reason = reason?.name?.lowercase()))

        override fun onSystemMessage(code: SystemMessageCode, message: String, dataJson: String?) {
            val name = when (code) {
                SystemMessageCode.SUCCESS -> "Success"
                SystemMessageCode.ERROR -> "Error"
                SystemMessageCode.REMOVED_FROM_CHANNEL -> "RemovedFromChannel"
            }
            record(Entry("system", code = name, dataJson = dataJson))
        }

        override fun onState(state: ConnectionState) {
            val name = when (state) {
                is ConnectionState.Connected -> "connected"
                is ConnectionState.Reconnecting -> "reconnecting"
                is ConnectionState.Closed -> "closed"
            }
            record(Entry("state", state = name, dataJson = state.toString()))
        }

        override fun onRelistenFailed(channelName: String, error: HeraldException) =
            record(Entry("relisten_failed", channel = channelName, dataJson = error.toString()))

        override fun onPresence(channelName: String, action: PresenceAction, member: PresenceMember) =
            // MEMBER_ADDED → "member_added": the wire's names.
            record(Entry("presence", channel = channelName, action = action.name.lowercase(), user = member.userId, payloadJson = member.infoJson))

        override fun onPresenceSynced(channelName: String, members: List<PresenceMember>) =
            record(Entry("presence_synced", channel = channelName, users = members.map { it.userId }))
    }

    /** One scenario's run: the client, the cursor in what its listener heard, saved values. */
    private inner class Run(private val herald: String, private val project: String) {
        val recorder = Recorder()
        var client: HeraldClient? = null
        var cursor = 0
        val saved = HashMap<String, Any?>()

        private fun client(): HeraldClient = client ?: error("no client: connect first")

        /** Runs a client call and checks its outcome against the step's `error` (a code), if any. */
        private fun call(step: JSONObject, what: String, block: suspend () -> Unit) {
            val expected = step.optString("error", "").ifEmpty { null }
            val failure = try {
                runBlocking { block() }
                null
            } catch (e: HeraldException) {
                e
            }
            when {
                expected == null && failure != null -> throw AssertionError("$what failed: $failure", failure)
                expected != null && failure == null -> throw AssertionError("$what succeeded, expected the error $expected")
                expected != null -> {
                    val code = when (failure) {
                        is HeraldException.Refused -> failure.code
                        is HeraldException.InvalidRequest -> failure.code
                        else -> null
                    }
                    if (code != expected) throw AssertionError("$what failed with $code ($failure), expected $expected")
                }
            }
        }

        fun step(step: JSONObject) {
            if (step.has("server")) {
                val answer = conductor.post("/step", step)
                step.optString("save", "").ifEmpty { null }?.let { saved[it] = answer.opt("id") }
                return
            }
            if (step.has("do")) {
                when (val action = step.getString("do")) {
                    "connect" -> {
                        val c = HeraldClient(herald, project, recorder, ConductorTokens())
                        client = c
                        call(step, "connect") { c.connect() }
                    }
                    "listen" -> call(step, "listen") { client().listen(step.getString("channel")) }
                    "remove" -> call(step, "remove") { client().remove(step.getString("channel")) }
                    "close" -> call(step, "close") { client().shutdown() }
                    "pause" -> recorder.pause()
                    "resume" -> recorder.resume()
                    else -> error("unknown do step $action")
                }
                return
            }
            when (val expect = step.getString("expect")) {
                "state" -> {
                    val state = step.getString("state")
                    cursor = recorder.waitFor(cursor, "state $state") { it.kind == "state" && it.state == state } + 1
                }
                "event" -> {
                    val channel = step.getString("channel")
                    val payload = step.opt("payload")
                    val id = step.optString("id_of", "").ifEmpty { null }?.let { saved[it] }
                    cursor = recorder.waitFor(cursor, "an event on $channel $payload") {
                        it.kind == "event" && it.channel == channel &&
                            (payload == null || sameJson(payload, it.payloadJson)) &&
                            (id == null || it.id == id)
                    } + 1
                }
                "system" -> {
                    val code = step.getString("code")
                    val channels = step.optJSONArray("channels")
                    val errorCode = step.optString("error_code", "").ifEmpty { null }
                    cursor = recorder.waitFor(cursor, "system_message $code") {
                        val data = it.dataJson?.let { d -> JSONObject(d) }
                        it.kind == "system" && it.code == code &&
                            (channels == null || sameJson(channels, data?.opt("channels")?.toString())) &&
                            (errorCode == null || data?.optString("errorCode") == errorCode)
                    } + 1
                }
                "no_event" -> {
                    Thread.sleep(step.optLong("ms", 0))
                    val channel = step.optString("channel", "").ifEmpty { null }
                    val leaked = recorder.from(cursor).filter { it.kind == "event" && (channel == null || it.channel == channel) }
                    if (leaked.isNotEmpty()) throw AssertionError("unexpected events: ${summary(leaked)}")
                }
                "recovery" -> {
                    val channel = step.getString("channel")
                    val recovered = step.getBoolean("recovered")
                    val reason = step.optString("reason", "").ifEmpty { null }
                    cursor = recorder.waitFor(cursor, "recovery of $channel: $recovered ${reason ?: ""}") {
                        it.kind == "recovery" && it.channel == channel && it.recovered == recovered &&
                            (reason == null || it.reason == reason)
                    } + 1
                }
                "offsets" -> {
                    val channel = step.getString("channel")
                    val offsets = recorder.from(0).filter { it.kind == "event" && it.channel == channel }.map { it.offset }
                    val expected = (1..offsets.size).map { it.toULong() }
                    if (offsets != expected) throw AssertionError("offsets on $channel are not 1..${offsets.size} in order: $offsets")
                    if (step.has("count") && offsets.size != step.getInt("count")) {
                        throw AssertionError("${offsets.size} events on $channel, expected ${step.getInt("count")}")
                    }
                }
                "presence" -> {
                    val channel = step.getString("channel")
                    val action = step.getString("action")
                    val user = step.getString("user")
                    val info = step.opt("info")
                    cursor = recorder.waitFor(cursor, "presence $action $user on $channel") {
                        it.kind == "presence" && it.channel == channel && it.action == action && it.user == user &&
                            (info == null || sameJson(info, it.payloadJson))
                    } + 1
                }
                "presence_synced" -> {
                    val channel = step.getString("channel")
                    val users = step.getJSONArray("users").let { a -> (0 until a.length()).map { a.getString(it) } }
                    cursor = recorder.waitFor(cursor, "presence synced on $channel: $users") {
                        it.kind == "presence_synced" && it.channel == channel && it.users == users
                    } + 1
                }
                "members" -> {
                    val channel = step.getString("channel")
                    val users = step.getJSONArray("users").let { a -> (0 until a.length()).map { a.getString(it) } }
                    val members = client().members(channel).map { it.userId }
                    if (members != users) throw AssertionError("members of $channel are $members, expected $users")
                }
                else -> error("unknown expect step $expect")
            }
        }

        fun close() {
            recorder.resume()
            client?.let { c ->
                runCatching { runBlocking { c.shutdown() } }
                c.close()
            }
        }
    }

    @BeforeAll
    fun startConductor() {
        conductor = Conductor(root)
    }

    @AfterAll
    fun stop() {
        conductor.close()
        val dir = root.resolve("target/conformance")
        Files.createDirectories(dir)
        Files.writeString(dir.resolve("kotlin.json"), report.toString(2))
    }

    @TestFactory
    fun scenarios(): List<DynamicTest> {
        val spec = JSONObject(Files.readString(root.resolve("tests/conformance/scenarios.json")))
        val scenarios = spec.getJSONArray("scenarios")
        return (0 until scenarios.length()).map { scenarios.getJSONObject(it) }.map { scenario ->
            val name = scenario.getString("name")
            DynamicTest.dynamicTest(name) {
                val fresh = conductor.post("/scenario")
                val run = Run(fresh.getString("herald"), fresh.getString("project"))
                try {
                    val steps = scenario.getJSONArray("steps")
                    for (i in 0 until steps.length()) {
                        val step = steps.getJSONObject(i)
                        try {
                            run.step(step)
                        } catch (e: Throwable) {
                            throw AssertionError("step ${i + 1} $step: ${e.message}", e)
                        }
                    }
                    synchronized(report) { report.put(JSONObject().put("name", name).put("passed", true)) }
                    println("conformance kotlin: $name ... ok")
                } catch (e: Throwable) {
                    synchronized(report) {
                        report.put(JSONObject().put("name", name).put("passed", false).put("error", e.message ?: e.toString()))
                    }
                    println("conformance kotlin: $name ... FAILED: ${e.message}")
                    throw e
                } finally {
                    run.close()
                }
            }
        }
    }

    private companion object {
        val EXPECT_TIMEOUT: Duration = Duration.ofSeconds(15)

        /** Whether `actualJson` is the JSON value `expected` (object keys in any order). */
        fun sameJson(expected: Any, actualJson: String?): Boolean {
            if (actualJson == null) return false
            val actual = JSONTokener(actualJson).nextValue()
            return when (expected) {
                is JSONObject -> actual is JSONObject && expected.similar(actual)
                is JSONArray -> actual is JSONArray && expected.similar(actual)
                else -> expected == actual
            }
        }

        fun summary(entries: List<Entry>): String {
            val shown = entries.take(40).map { it.toString().let { s -> if (s.length > 300) s.take(300) + "…" else s } }
            val more = entries.size - shown.size
            return shown.joinToString(", ", "[", "]") + if (more > 0) " and $more more" else ""
        }
    }
}
