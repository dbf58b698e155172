// LoRA Trainer: "Send to txt2img" puts "<lora:name:w>" (and the trigger word) into the txt2img prompt.
(function () {
    function app() {
        return typeof gradioApp === "function" ? gradioApp() : document;
    }
    window.loraTrainerSendToTxt2img = function (text) {
        var box = app().querySelector("#txt2img_prompt textarea");
        if (!box || !text) {
            return;
        }
        box.value = box.value.trim() ? box.value.trim() + ", " + text : text;
        if (typeof updateInput === "function") {
            updateInput(box);
        } else {
            box.dispatchEvent(new Event("input", {bubbles: true}));
        }
        if (typeof switch_to_txt2img === "function") {
            switch_to_txt2img();
        }
    };
})();
