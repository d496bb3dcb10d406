//! The uniffi bindings generator, built with this workspace's uniffi version so that the
//! generated Kotlin and Swift always match the scaffolding compiled into the library.

fn main() {
    uniffi::uniffi_bindgen_main()
}
