package herald.mobile

import java.net.URI
import java.net.http.HttpClient
import java.net.http.HttpRequest
import java.net.http.HttpResponse
import java.nio.file.Files
import java.nio.file.Path
import java.time.Duration
import java.util.UUID
import java.util.concurrent.CompletableFuture
import java.util.concurrent.TimeUnit
import java.util.concurrent.atomic.AtomicInteger
import kotlin.concurrent.thread
import org.json.JSONObject

/** A project with an API key that may publish and sign tokens. */
data class Project(val id: String, val key: ApiKey)

/** An API key: its id (for the admin API) and the secret `hk_…` key (for the publisher API). */
data class ApiKey(val id: String, val secret: String)

/**
 * A real Herald server: `herald serve --bind 127.0.0.1:0` with its own data directory and admin
 * token, talked to over its REST API with java.net.http. The binary comes from the system property
 * `herald.bin` (set by the POM to target/debug/herald). Its logs go to `server.log` in the data
 * directory, or to stderr with `HERALD_TEST_LOG=1`.
 */
class TestServer private constructor(
    private var process: Process,
    /** `http://127.0.0.1:PORT` */
    val url: String,
    private val adminToken: String,
    private val dataDir: Path,
) : AutoCloseable {
    private val http = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(5)).build()
    private val projects = AtomicInteger()

    companion object {
        fun start(): TestServer {
            val dataDir = Files.createTempDirectory("herald-kotlin-test")
            val adminToken = "admin-" + UUID.randomUUID()
            val (process, url) = spawn(dataDir, adminToken, "127.0.0.1:0")
            return TestServer(process, url, adminToken, dataDir)
        }

        private fun spawn(dataDir: Path, adminToken: String, bind: String): Pair<Process, String> {
            val bin = Path.of(System.getProperty("herald.bin") ?: error("system property herald.bin is not set"))
            check(Files.isExecutable(bin)) { "$bin is missing: build it with `cargo build -p herald-server`" }
            val command = listOf(
                bin.toString(), "serve",
                "--bind", bind,
                "--data-dir", dataDir.toString(),
                "--admin-token", adminToken,
            )
            val logs = if (System.getenv("HERALD_TEST_LOG") != null) {
                ProcessBuilder.Redirect.INHERIT
            } else {
                ProcessBuilder.Redirect.appendTo(dataDir.resolve("server.log").toFile())
            }
            val process = ProcessBuilder(command).redirectError(logs).start()
            val stdout = process.inputStream.bufferedReader()
            val listening = Regex("""herald listening on (http://\S+)""")
            val url = try {
                CompletableFuture.supplyAsync {
                    generateSequence { stdout.readLine() }
                        .firstNotNullOfOrNull { listening.find(it)?.groupValues?.get(1) }
                }.get(30, TimeUnit.SECONDS)
            } catch (e: Exception) {
                process.destroyForcibly()
                throw IllegalStateException("herald did not start: $e; see ${dataDir.resolve("server.log")}", e)
            } ?: run {
                process.destroyForcibly()
                error("herald exited before listening; see ${dataDir.resolve("server.log")}")
            }
            // Keep reading stdout so that the server never blocks on a full pipe.
            thread(isDaemon = true, name = "herald-stdout") { stdout.forEachLine { } }
            return process to url
        }
    }

    /** Stops the server (SIGTERM) and starts it again on the same address and data directory. */
    fun restart() {
        stop()
        val (process, url) = spawn(dataDir, adminToken, this.url.removePrefix("http://"))
        check(url == this.url) { "restarted on $url instead of ${this.url}" }
        this.process = process
    }

    private fun stop() {
        process.destroy() // SIGTERM: graceful shutdown
        if (!process.waitFor(10, TimeUnit.SECONDS)) {
            process.destroyForcibly().waitFor(5, TimeUnit.SECONDS)
        }
    }

    /** A new project (unique id) with a key that has both publisher scopes. */
    fun newProject(): Project {
        val id = "kt-${projects.incrementAndGet()}-${UUID.randomUUID().toString().take(8)}"
        admin("POST", "/v1/admin/projects", JSONObject().put("id", id).put("name", "Kotlin test $id"), 201)
        return Project(id, createKey(id, "test-key"))
    }

    fun createKey(projectId: String, name: String): ApiKey {
        val body = JSONObject().put("name", name).put("scopes", listOf("publish_event", "sign_token"))
        val key = admin("POST", "/v1/admin/projects/$projectId/api-keys", body, 201)
        return ApiKey(key.getString("id"), key.getString("key"))
    }

    fun deleteKey(projectId: String, keyId: String) {
        admin("DELETE", "/v1/admin/projects/$projectId/api-keys/$keyId", null, 204)
    }

    /** Publishes `payloadJson` to `channel`; returns the message id. */
    fun publish(key: ApiKey, channel: String, payloadJson: String): String {
        val body = JSONObject().put("channelName", channel).put("payload", JSONObject(payloadJson))
        return call("POST", "/v1/publishers/events/publish", key.secret, body, 200).getString("id")
    }

    /** Signs a token for the private channel `channel` with `key`. */
    fun sign(key: ApiKey, channel: String): String =
        call("POST", "/v1/publishers/sign", key.secret, JSONObject().put("channelName", channel), 200)
            .getString("token")

    private fun admin(method: String, path: String, body: JSONObject?, expected: Int): JSONObject =
        call(method, path, adminToken, body, expected)

    private fun call(method: String, path: String, bearer: String, body: JSONObject?, expected: Int): JSONObject {
        val request = HttpRequest.newBuilder(URI.create(url + path))
            .timeout(Duration.ofSeconds(10))
            .header("Authorization", "Bearer $bearer")
            .header("Content-Type", "application/json")
            .method(
                method,
                body?.let { HttpRequest.BodyPublishers.ofString(it.toString()) }
                    ?: HttpRequest.BodyPublishers.noBody(),
            )
            .build()
        val response = http.send(request, HttpResponse.BodyHandlers.ofString())
        check(response.statusCode() == expected) {
            "$method $path answered ${response.statusCode()} (expected $expected): ${response.body()}"
        }
        return if (response.body().isBlank()) JSONObject() else JSONObject(response.body())
    }

    override fun close() {
        stop()
        dataDir.toFile().deleteRecursively()
    }
}
