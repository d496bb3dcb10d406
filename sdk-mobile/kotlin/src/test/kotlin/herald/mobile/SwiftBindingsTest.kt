package herald.mobile

import com.sun.jna.NativeLibrary
import java.nio.file.Files
import java.nio.file.Path
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Assertions.fail
import org.junit.jupiter.api.Test

/**
 * The Swift bindings cannot be compiled here (no Swift toolchain), so this checks what can be
 * checked without one: the generated Swift declares the same public API as the Kotlin, the module
 * map names the header, and every C function the header declares is exported by the native
 * library the Kotlin tests use (so Swift would link against it).
 */
class SwiftBindingsTest {
    private val swiftDir: Path =
        Path.of(System.getProperty("herald.generated") ?: error("system property herald.generated is not set"))
            .resolve("swift")

    private fun read(name: String): String {
        val file = swiftDir.resolve(name)
        if (!Files.exists(file)) fail<Unit>("$file is missing: run sdk-mobile/build-bindings.sh")
        return Files.readString(file)
    }

    /**
     * Comment- and whitespace-insensitive: uniffi's unformatted output puts doc comments inside
     * declarations and has irregular spacing.
     */
    private fun assertDeclares(source: String, vararg declarations: String) {
        val code = squash(source.replace(Regex("""(?s)/\*.*?\*/"""), " ").replace(Regex("""(?m)^\s*//.*$"""), " "))
        for (declaration in declarations) {
            assertTrue(code.contains(squash(declaration)), "the Swift bindings do not declare: $declaration")
        }
    }

    private fun squash(text: String): String =
        text.replace(Regex("""\s+"""), " ").replace(Regex("""\s*([(),:?{}=>-])\s*"""), "$1")

    @Test
    fun `the Swift bindings declare the client API`() {
        val swift = read("HeraldMobile.swift")
        assertDeclares(
            swift,
            "import HeraldMobileFFI",
            "open class HeraldClient: HeraldClientProtocol",
            "public convenience init(serverUrl: String, projectId: String, listener: HeraldListener, tokenProvider: TokenProvider? = nil) throws",
            "open func connect() async throws",
            "open func listen(channelName: String) async throws",
            "open func listenPrivate(channelName: String) async throws",
            "open func remove(channelName: String) async throws",
            "open func close() async",
        )
    }

    @Test
    fun `the Swift bindings declare the callback protocols`() {
        val swift = read("HeraldMobile.swift")
        assertDeclares(
            swift,
            "public protocol HeraldListener: AnyObject, Sendable",
            "func onEvent(channelName: String, payloadJson: String, messageId: String?, offset: UInt64?, epoch: String?) throws",
            "func onSystemMessage(code: SystemMessageCode, message: String, dataJson: String?) throws",
            "func onState(state: ConnectionState) throws",
            "func onRelistenFailed(channelName: String, error: HeraldError) throws",
            "func onRecovery(channelName: String, recovered: Bool, reason: RecoveryReason?) throws",
            "func onPresence(channelName: String, action: PresenceAction, member: PresenceMember) throws",
            "func onPresenceSynced(channelName: String, members: [PresenceMember]) throws",
            "public protocol TokenProvider: AnyObject, Sendable",
            "func token(channelName: String) throws -> String",
        )
    }

    @Test
    fun `the Swift bindings declare the error enum and the value types`() {
        val swift = read("HeraldMobile.swift")
        assertDeclares(
            swift,
            "public enum HeraldError: Swift.Error",
            "case InvalidRequest(code: String, reason: String)",
            "case Refused(code: String, reason: String)",
            "case TokenProvider(channelName: String, reason: String)",
            "case Connection(reason: String)",
            "case Timeout(reason: String)",
            "case Config(reason: String)",
            "case NotConnected",
            "case Closed",
            "case Internal(reason: String)",
            "public enum ConnectionState",
            "case connected",
            "case reconnecting(attempt: UInt32, delay: TimeInterval, cause: String)",
            "case closed(cause: String?)",
            "public enum SystemMessageCode",
            "case success",
            "case error",
            "case removedFromChannel",
        )
    }

    @Test
    fun `the module map names the header, whose functions the native library exports`() {
        val modulemap = read("HeraldMobileFFI.modulemap")
        assertDeclares(modulemap, "module HeraldMobileFFI {", "header \"HeraldMobileFFI.h\"")

        val header = read("HeraldMobileFFI.h")
        val functions = Regex("""\b((?:uniffi|ffi)_herald_mobile_\w+)\s*\(""")
            .findAll(header).map { it.groupValues[1] }.toSortedSet()
        for (expected in listOf(
            "uniffi_herald_mobile_fn_constructor_heraldclient_new",
            "uniffi_herald_mobile_fn_method_heraldclient_connect",
            "uniffi_herald_mobile_fn_method_heraldclient_listen",
            "uniffi_herald_mobile_fn_method_heraldclient_listen_private",
            "uniffi_herald_mobile_fn_method_heraldclient_remove",
            "uniffi_herald_mobile_fn_method_heraldclient_close",
            "uniffi_herald_mobile_fn_init_callback_vtable_heraldlistener",
            "uniffi_herald_mobile_fn_init_callback_vtable_tokenprovider",
        )) {
            assertTrue(expected in functions, "the header does not declare $expected")
        }
        val library = NativeLibrary.getInstance("herald_mobile")
        val missing = functions.filter { name -> runCatching { library.getFunction(name) }.isFailure }
        assertEquals(emptyList<String>(), missing, "declared in the header but not exported by ${library.file}")
    }
}
